//! Filesystem and partition-table probes on the input taken as a whole disk
//! image: `probe_filesystem` and `read_partition_table` (512- and 4096-byte
//! sectors). See probe_placed for inputs placed at the superblock offsets.
#![no_main]

use dockroot::probe::{probe_filesystem, read_partition_table};
use libfuzzer_sys::fuzz_target;

mod probe_checks;
use probe_checks as checks;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(info)) = probe_filesystem(data) {
        checks::check_fs(&info);
    }
    for ss in [512, 4096] {
        if let Ok(Some(t)) = read_partition_table(data, ss) {
            checks::check_table(&t);
        }
    }
});
