//! Tests of the `keygate` binary itself (filled below).
