//! `rk3s-flannel`: not built yet (the node-side issues that follow #6).

fn main() -> std::process::ExitCode {
    eprintln!(
        "{}: this component is not implemented yet (tracked by the node-side issues that follow #6)",
        rk3s_cni_flannel::COMPONENT
    );
    std::process::ExitCode::from(2)
}
