//! The appliance cache: where it lives, fingerprints, locks and atomic publish.
