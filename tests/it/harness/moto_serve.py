"""A moto server, as moto_server runs it, that first takes back the objects a killed one held:
python3 moto_serve.py HOST PORT RECORDING REPORT.

It replays RECORDING (made by moto's recorder, MOTO_ENABLE_RECORDING) into itself, request by
request in the order they were recorded, through a listener of its own on a free loopback port,
and only then listens on HOST:PORT. moto records a request before acting on it, and the first
requests a new server takes wait long in between (it loads its S3 backend): a request taken
during a replay could be recorded before a replayed one and acted on after it (the bucket's
creation, say), and be lost by the next replay. Since nothing else reaches the server during
the replay, the requests it records anew (the replayed ones first) are in the order it acted
on them.

REPORT gets a line for each replayed request answered other than 2xx and for the torn last
entry a kill may leave, then "replayed N". The server exits (status 1) before listening, with
the reason last in REPORT, when an entry other than the last cannot be decoded or when a PUT
failed and no entry stored its key: an object the recorded server may have acknowledged would
be lost. A 412 to a create-only PUT (If-None-Match: *) is what the recorded server answered too
when an earlier entry stored the same key: another attempt at the same upload, as when the
killed server took one without answering it. Without such an entry it is a failure.
"""

import base64
import json
import os
import re
import sys
import threading
import urllib.parse

import requests
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server, run_simple

# How moto's recorder begins every entry (json.dumps of a dict whose first key is "headers").
ENTRY_START = '{"headers": '


class Lost(Exception):
    """The replay could not bring back everything the recording holds."""


def entries(text, report):
    """Yields (offset, entry) for each recorded request. moto writes an entry's newline apart
    from it, so a newline may follow another thread's entry: the text is read as a stream of
    JSON values. A kill may tear the last entry (a request never acted on), which is reported
    and left out; an undecodable entry with more after it is an error."""
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
                raise Lost(
                    f"cannot decode the entry at offset {at} ({error}), "
                    f"yet entries follow from offset {later}"
                ) from error
            report(f"left out the torn last entry at offset {at} ({len(text) - at} characters)")
            return
        yield at, entry
        at = end


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


def replay(text, endpoint, report):
    """Replays the recording `text` to `endpoint`; returns how many requests it replayed."""
    count, stored, failed = 0, set(), {}
    for at, entry in entries(text, report):
        path, response = send(entry, endpoint)
        count += 1
        method, status = entry["method"], response.status_code
        if 200 <= status < 300:
            if method == "PUT":
                stored.add(path)
            continue
        note = ""
        if method == "PUT" and status == 412 and path in stored:
            note = " (stored by an earlier entry: another attempt at the same upload)"
        elif method == "PUT":
            failed.setdefault(path, f"entry {count} at offset {at}")
        report(f"entry {count} at offset {at}: {method} {path} -> {status} {error_code(response)}{note}")
    lost = {path: where for path, where in failed.items() if path not in stored}
    for path, where in lost.items():
        report(f"LOST: {path}: its PUT ({where}) failed, and no entry stored it")
    if lost:
        raise Lost(f"{len(lost)} PUTs failed whose objects no entry stored")
    return count


def replay_privately(app, recording, report):
    """Replays `recording` into `app` through a listener on a free loopback port, one request
    at a time; returns how many requests it replayed."""
    with open(recording) as file:
        text = file.read()
    private = make_server("127.0.0.1", 0, app, threaded=False)
    serving = threading.Thread(target=private.serve_forever)
    serving.start()
    try:
        return replay(text, f"http://127.0.0.1:{private.server_port}", report)
    finally:
        private.shutdown()
        serving.join()
        private.server_close()


def main(host, port, recording, report_path):
    os.environ.setdefault("MOTO_PORT", port)
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    with open(report_path, "w") as report_file:

        def report(line):
            print(line, file=report_file, flush=True)

        try:
            count = replay_privately(app, recording, report)
        except Lost as lost:
            report(f"FAILED: {lost}")
            sys.exit(1)
        report(f"replayed {count}")
    run_simple(host, int(port), app, threaded=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
