//! What the simulator tests share.

use std::path::Path;

use serde_json::Value;
use xenmaint::sim::SimHost;

/// The bundled example host, with each guest's disk a real file under `dir`
/// (restores refuse guests whose disks are missing).
pub fn example_host(dir: &Path) -> SimHost {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json"),
    )
    .unwrap();
    let mut host: Value = serde_json::from_str(&text).unwrap();
    for d in host["domains"].as_array_mut().unwrap() {
        let name = d["name"].as_str().unwrap().to_owned();
        if d["disks"].as_array().is_some_and(|a| !a.is_empty()) {
            let disk = dir.join(format!("{name}.img"));
            std::fs::write(&disk, b"disk").unwrap();
            let p = disk.display().to_string();
            d["disks"][0]["path"] = p.clone().into();
            d["config"]["disks"][0]["pdev_path"] = p.into();
        }
    }
    serde_json::from_value(host).unwrap()
}
