//! An ext2 (rev 1) filesystem writer.
