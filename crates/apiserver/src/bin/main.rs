//! `rk3s-apiserver`: not built yet (issue #3).

fn main() -> std::process::ExitCode {
    eprintln!(
        "{}: this component is not implemented yet (tracked by issue #3)",
        rk3s_apiserver::COMPONENT
    );
    std::process::ExitCode::from(2)
}
