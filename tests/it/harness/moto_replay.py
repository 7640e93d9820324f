"""Replays a recording moto made (MOTO_ENABLE_RECORDING) into the moto server at ENDPOINT,
request by request in the order they were recorded: python3 moto_replay.py RECORDING ENDPOINT.

Prints how many requests it replayed; reports on stderr, one line each, every replayed request
answered other than 2xx, and the torn last entry a kill may leave. Fails (exit status 1) when
an entry other than the last cannot be decoded, or when a PUT was answered with an error and no
entry stored its key: an object the recorded server may have acknowledged would be lost.

A 412 to a create-only PUT (If-None-Match: *) says the object is there. The recorded server gave
that answer too when an earlier entry stored the same key: another attempt at the same upload,
as when the killed server took one without answering it. Otherwise a client of the server
stored it during the replay (the server answers them meanwhile).
"""

import base64
import json
import re
import sys
import urllib.parse

import requests

# How moto's recorder begins every entry (json.dumps of a dict whose first key is "headers").
ENTRY_START = '{"headers": '


def entries(text):
    """Yields (byte offset, entry) for each recorded request. moto writes an entry's newline
    apart from it, so a newline may follow another thread's entry: the text is read as a
    stream of JSON values. A kill may tear the last entry (a request never acted on), which is
    reported and left out; an undecodable entry with more after it is an error."""
    decoder, at = json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        try:
            entry, end = decoder.raw_decode(text, at)
        except ValueError as error:
            later = text.find(ENTRY_START, at + 1)
            if later != -1:
                sys.exit(
                    f"cannot decode the entry at offset {at} ({error}), "
                    f"yet entries follow from offset {later}"
                )
            report(f"left out the torn last entry at offset {at} ({len(text) - at} characters)")
            return
        yield at, entry
        at = end


def report(line):
    print(line, file=sys.stderr)


def send(entry, endpoint):
    """Sends one recorded request to `endpoint`; returns its path and the response."""
    body = entry.get("body", "{}")
    if entry.get("body_encoded"):
        body = base64.b64decode(body)
    url = urllib.parse.urlsplit(entry["url"])
    target = endpoint + url.path + ("?" + url.query if url.query else "")
    headers = entry["headers"]
    headers.pop("Transfer-Encoding", None)
    return url.path, requests.request(entry["method"], target, headers=headers, data=body)


def error_code(response):
    """The S3 error code of an error response ("NoSuchBucket"), or its reason."""
    found = re.search(r"<Code>([^<]*)</Code>", response.text)
    return found.group(1) if found else response.reason


def main(recording, endpoint):
    with open(recording) as file:
        text = file.read()
    count, stored, failed = 0, set(), {}
    for at, entry in entries(text):
        path, response = send(entry, endpoint)
        count += 1
        method, status = entry["method"], response.status_code
        if 200 <= status < 300:
            if method == "PUT":
                stored.add(path)
            continue
        note = ""
        if method == "PUT" and status == 412:
            note = (
                " (stored by an earlier entry: another attempt at the same upload)"
                if path in stored
                else " (already there: a client stored it during the replay)"
            )
            stored.add(path)
        elif method == "PUT":
            failed.setdefault(path, f"entry {count} at offset {at}")
        report(f"entry {count} at offset {at}: {method} {path} -> {status} {error_code(response)}{note}")
    lost = {path: where for path, where in failed.items() if path not in stored}
    if lost:
        for path, where in lost.items():
            report(f"LOST: {path}: its PUT ({where}) failed, and no entry stored it")
        sys.exit(f"{len(lost)} PUTs failed whose objects no entry stored")
    print(count)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
