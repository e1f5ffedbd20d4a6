#[test]
fn smoke() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/good/quickstart");
    let set = match ward_config::load_paths(&[dir]) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    for w in &set.warnings {
        println!("W {w}");
    }
    let snap = ward_config::translate(&set);
    match &snap {
        Ok(s) => println!("{}", serde_json::to_string_pretty(s).unwrap()),
        Err(e) => println!("ERR {e}"),
    }
    for d in ward_config::analyze(&set) {
        println!("A {d}");
    }
}
