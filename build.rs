// Embed the libtorch library directory as an rpath so the binary, tests and benches run
// without LD_LIBRARY_PATH. torch-sys exports its lib dir to direct dependents via `links`.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
