//! What the simulator tests share.

pub mod run;

use std::path::Path;

use serde_json::Value;
use xenmaint::guest::{AfterSave, SaveOptions};
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

/// The example host with `n` guests made from its web-1 (each its own name,
/// UUID, MAC, IP and disk file under `dir`).
#[allow(dead_code)] // not every test crate that includes this module uses it
pub fn many_guests(dir: &Path, n: usize) -> SimHost {
    let mut host = serde_json::to_value(example_host(dir)).unwrap();
    let domains = host["domains"].as_array_mut().unwrap();
    let template = domains
        .iter()
        .find(|d| d["name"] == "web-1")
        .unwrap()
        .clone();
    domains.retain(|d| d["domid"] == 0);
    for i in 0..n {
        let mut d = template.clone();
        let name = format!("guest-{i:04}");
        let uuid = format!("00000000-0000-4000-8000-{i:012x}");
        let mac = format!("00:16:3e:00:{:02x}:{:02x}", i / 256, i % 256);
        let ip = format!("10.1.{}.{}", i / 250, 1 + i % 250);
        let disk = dir.join(format!("{name}.img"));
        std::fs::write(&disk, b"disk").unwrap();
        let disk = disk.display().to_string();
        d["domid"] = (i + 1).into();
        d["name"] = name.clone().into();
        d["uuid"] = uuid.clone().into();
        d["nics"][0]["mac"] = mac.clone().into();
        d["nics"][0]["ip"] = ip.clone().into();
        d["disks"][0]["path"] = disk.clone().into();
        d["config"]["c_info"]["name"] = name.into();
        d["config"]["c_info"]["uuid"] = uuid.into();
        d["config"]["nics"][0]["mac"] = mac.into();
        d["config"]["nics"][0]["ip"] = ip.into();
        d["config"]["disks"][0]["pdev_path"] = disk.into();
        domains.push(d);
    }
    serde_json::from_value(host).unwrap()
}

/// A plain save into `dir`/images that destroys the guest, as `xenmaint save` does.
#[allow(dead_code)] // not every test crate that includes this module uses it
pub fn save_opts(dir: &Path) -> SaveOptions<'static> {
    SaveOptions {
        out: None,
        image_dir: dir.join("images"),
        live: false,
        then: AfterSave::Destroy,
        read_back: false,
        gate: None,
        fresh_dir: false,
        paused_ok: false,
    }
}
