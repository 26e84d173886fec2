//! Tests of one poll against the in-memory chroot.
