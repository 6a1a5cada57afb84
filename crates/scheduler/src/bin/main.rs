//! `rk3s-scheduler`: not built yet (issue #5).

fn main() -> std::process::ExitCode {
    eprintln!(
        "{}: this component is not implemented yet (tracked by issue #5)",
        rk3s_scheduler::COMPONENT
    );
    std::process::ExitCode::from(2)
}
