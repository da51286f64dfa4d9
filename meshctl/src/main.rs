//! meshctl
fn main() {}
