//! Policy matching: which policies apply to a Dataplane, and their merged configuration in
//! targetRef specificity order (placeholder: to be written).
