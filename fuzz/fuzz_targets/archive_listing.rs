//! Parsing the names an archive listing returns: never panics, whatever the bytes (a name
//! walhalla did not write is refused, not a crash), and every accepted name prints back to
//! the same text, so a name is never taken for another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::archive::{
    ObjectName, WalGroup, parse_cluster_folder, parse_group_object, parse_index_object,
    parse_timeline_object,
};

fuzz_target!(|data: &[u8]| {
    // Listings hand over names as text; other bytes are lossily converted first.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    if let Some(id) = parse_cluster_folder(text) {
        assert_eq!(id.to_string(), text);
    }
    if let Some(group) = WalGroup::parse(text) {
        assert_eq!(group.to_string(), text);
    }
    if let Some(object) = ObjectName::parse(text) {
        assert_eq!(object.to_string(), text);
        assert_eq!(ObjectName::parse(&object.to_string()), Some(object));
    }
    if let Some(timeline) = parse_timeline_object(text) {
        assert_eq!(format!("{:08X}.history.zst", timeline.0), text);
    }
    // A group name and an object name in one input: the object must belong to the group.
    if let Some((group, file)) = text.split_once('/') {
        if let Some(group) = WalGroup::parse(group) {
            if let Some(object) = parse_group_object(group, file) {
                assert_eq!(object.segment().map(WalGroup::of), Some(group));
            }
            if let Some(segment) = parse_index_object(group, file) {
                assert_eq!(WalGroup::of(segment), group);
                assert_eq!(format!("{segment}.json.zst"), file);
            }
        }
    }
});
