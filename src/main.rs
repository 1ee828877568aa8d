#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`, read at start-up; `_RJEM_MALLOC_CONF` in the
/// environment still overrides them). A background thread returns freed memory to the system
/// while the controller is idle: without it, the burst of a restart (every object listed,
/// decoded and looked at once) stayed resident, 71 MiB instead of 52 at 11,000 Kubeconfigs
/// (`make bench`).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static C string, valid for the whole run.
    Some(unsafe { &*c"background_thread:true".as_ptr() });

fn main() -> std::process::ExitCode {
    kubeconfig_authority::cli::main()
}
