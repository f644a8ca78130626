//! Choosing the kernel and modules for an appliance, and the initrd module set.
