//! Prepares the Python virtualenv with grpcio that the gRPC proxyless tests use (CI runs it
//! before the tests, so a missing Python or an unreachable PyPI fails early and clearly) and
//! prints the interpreter's path.

fn main() {
    println!("{}", test_support::python_with_grpcio().display());
}
