//! Reading supermin.d inputs and resolving them into the ordered set of host files for the appliance.
