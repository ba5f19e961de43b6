//! Where a guest answers on the network: its IP addresses as recorded before
//! maintenance (from its config's `ip=`, from what the guest publishes in
//! xenstore, and from dom0's neighbour table for its MACs), so that they can
//! be probed after it is back.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::domain::{Mac, Nic};

/// Where an address was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The vif's `ip=` in the domain's config.
    Config,
    /// Published by the guest under its xenstore `attr/` keys (guest agents).
    Xenstore,
    /// dom0's neighbour (ARP) table holds it at one of the guest's MACs.
    Neighbour,
}

/// One address of a guest, and how we know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ip: IpAddr,
    /// The guest MAC it belongs to, when known.
    pub mac: Option<Mac>,
    pub sources: Vec<Source>,
}

/// One complete entry of dom0's neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Mac,
    pub device: String,
}

/// Parses `/proc/net/arp`; keeps only complete entries (flag ATF_COM).
pub fn parse_arp(text: &str) -> Vec<Neighbour> {
    const ATF_COM: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw_type, flags, mac, _mask, device] = f.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            (flags & ATF_COM != 0).then_some(())?;
            Some(Neighbour {
                ip: ip.parse().ok()?,
                mac: mac.parse().ok()?,
                device: (*device).to_owned(),
            })
        })
        .collect()
}

/// Whether an address is one a probe may be sent to: a unicast address,
/// not this host's loopback (a guest chooses what it publishes).
pub fn probeable(ip: &IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || broadcast)
}

/// Merges what each source says into one list, in address order.
pub fn collect(nics: &[Nic], published: &[IpAddr], neighbours: &[Neighbour]) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::new();
    let mut add = |ip: IpAddr, mac: Option<Mac>, source: Source| {
        if !probeable(&ip) {
            return;
        }
        match out.iter_mut().find(|a| a.ip == ip) {
            Some(a) => {
                a.mac = a.mac.or(mac);
                if !a.sources.contains(&source) {
                    a.sources.push(source);
                    a.sources.sort();
                }
            }
            None => out.push(Address {
                ip,
                mac,
                sources: vec![source],
            }),
        }
    };
    for nic in nics {
        for ip in nic.ip.iter().flat_map(|s| s.split_whitespace()) {
            // libxl keeps `ip=` as given; an address with a prefix length
            // ("10.0.0.5/24") is still that address.
            if let Ok(ip) = ip.split('/').next().unwrap_or(ip).parse() {
                add(ip, Some(nic.mac), Source::Config);
            }
        }
    }
    for ip in published {
        add(*ip, None, Source::Xenstore);
    }
    for n in neighbours {
        if nics.iter().any(|nic| nic.mac == n.mac) {
            add(n.ip, Some(n.mac), Source::Neighbour);
        }
    }
    out.sort_by_key(|a| a.ip);
    out
}

/// The addresses a guest publishes in xenstore, from its `attr/` keys as
/// (key relative to `attr/`, value) pairs: `vif/<devid>/ipv4/<n>` and
/// `vif/<devid>/ipv6/<n>` (XenServer's guest agent), `eth<n>/ip` (older
/// agents). Values are the guest's to choose: anything that does not parse
/// as an address is ignored.
pub fn published(attrs: &[(String, String)]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = attrs
        .iter()
        .filter(|(key, _)| {
            let k: Vec<&str> = key.split('/').collect();
            matches!(k.as_slice(), ["vif", _, "ipv4" | "ipv6", _])
                || matches!(k.as_slice(), [eth, "ip"] if eth.starts_with("eth"))
        })
        .filter_map(|(_, value)| value.trim().parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Probes an address: one ICMP echo, answered within `timeout`. A raw
/// socket (xenmaint runs as root): Linux's unprivileged ICMP sockets are
/// off for every group by default (net.ipv4.ping_group_range), root's too.
pub fn ping(ip: IpAddr, timeout: std::time::Duration) -> bool {
    ::ping::new(ip)
        .socket_type(::ping::SocketType::RAW)
        .timeout(timeout)
        .send()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mac: &str, ip: Option<&str>) -> Nic {
        Nic {
            devid: 0,
            mac: mac.parse().unwrap(),
            bridge: Some("xenbr0".into()),
            ip: ip.map(str::to_owned),
            script: None,
            backend_domid: 0,
        }
    }

    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.0.2.21        0x1         0x2         00:16:3e:58:4d:21     *        xenbr0
10.0.2.99        0x1         0x0         00:00:00:00:00:00     *        xenbr0
10.0.2.50        0x1         0x2         00:16:3e:58:4d:21     *        xenbr0
10.0.2.2         0x1         0x2         52:55:0a:00:02:02     *        xenbr0
garbage line
";

    #[test]
    fn the_neighbour_table_keeps_complete_entries_only() {
        let n = parse_arp(ARP);
        let ips: Vec<String> = n.iter().map(|n| n.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.2.21", "10.0.2.50", "10.0.2.2"]);
        assert_eq!(n[0].device, "xenbr0");
    }

    #[test]
    fn sources_merge_per_address_and_foreign_macs_are_ignored() {
        let nics = [nic("00:16:3e:58:4d:21", Some("10.0.2.21 10.0.3.1/24"))];
        let published = published(&[
            ("vif/0/ipv4/0".into(), "10.0.2.21".into()),
            ("vif/0/ipv6/0".into(), "fe80::216:3eff:fe58:4d21".into()),
            ("eth0/ip".into(), " 10.0.2.60\n".into()),
            ("vif/0/ipv4/1".into(), "not an address".into()),
            ("os/name".into(), "10.9.9.9".into()),
            ("vif/0/ipv4/2".into(), "127.0.0.1".into()),
        ]);
        let got = collect(&nics, &published, &parse_arp(ARP));
        let summary: Vec<(String, Vec<Source>)> = got
            .iter()
            .map(|a| (a.ip.to_string(), a.sources.clone()))
            .collect();
        use Source::*;
        assert_eq!(
            summary,
            [
                ("10.0.2.21".into(), vec![Config, Xenstore, Neighbour]),
                ("10.0.2.50".into(), vec![Neighbour]),
                ("10.0.2.60".into(), vec![Xenstore]),
                ("10.0.3.1".into(), vec![Config]),
                ("fe80::216:3eff:fe58:4d21".into(), vec![Xenstore]),
            ]
        );
        assert_eq!(got[0].mac, Some("00:16:3e:58:4d:21".parse().unwrap()));
    }

    #[test]
    fn ping_gets_an_answer_from_this_host_as_root() {
        let answered = ping(
            "127.0.0.1".parse().unwrap(),
            std::time::Duration::from_secs(2),
        );
        // Raw sockets need root (CI runs the tests as root); without it the
        // probe must fail cleanly, not panic.
        assert_eq!(answered, nix::unistd::geteuid().is_root());
    }

    #[test]
    fn loopback_broadcast_and_multicast_are_never_probed() {
        for ip in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(!probeable(&ip.parse().unwrap()), "{ip}");
        }
        assert!(probeable(&"10.0.2.21".parse().unwrap()));
    }
}
