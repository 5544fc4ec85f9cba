// Embed the libtorch library directory as an rpath so the binary, tests and benches run
// without LD_LIBRARY_PATH. torch-sys exports its lib dir to direct dependents via `links`.
// A bundle for another machine (COME_BUNDLE=1, scripts/bundle.sh) gets none: its launcher
// points it at the host's PyTorch, and a stale path to the build machine's must not win.
// (libtorch_cuda, which registers the CUDA backend, is loaded at run time when a CUDA
// device is asked for: `runtime::load_cuda_backend`.)
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=COME_BUNDLE");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    if std::env::var("COME_BUNDLE").is_ok_and(|v| v == "1") {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
