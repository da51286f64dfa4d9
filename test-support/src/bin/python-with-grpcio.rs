//! Prepares the Python virtualenvs the tests use (CI runs it before the tests, so a missing
//! Python or an unreachable PyPI fails early and clearly): grpcio for the gRPC proxyless tests,
//! kubernetes-validate for meshctl's Kubernetes manifests (its schemas make that test offline).
//! Prints each interpreter's path.

fn main() {
    println!("{}", test_support::python_with_grpcio().display());
    println!(
        "{}",
        test_support::python_with_kubernetes_validate().display()
    );
}
