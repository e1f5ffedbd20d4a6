//! Service virtual IPs: the addresses an app dials to reach a ServiceEntry host when its traffic
//! is captured (docs/capture.md, "Service addresses"). Pure.
//!
//! A host takes the entry's `spec.addresses` when it has any. Otherwise a host that is not a
//! wildcard gets one IPv4 address from the range Istio's ServiceEntry auto-allocation uses,
//! `240.240.0.0/16` (reserved class E space, never routed; istio/istio `pilot/pkg/model/service.go`,
//! `AutoAllocatedIPv4Address`, and the `PILOT_IP_AUTOALLOCATE_IPV4_PREFIX` default of the
//! ServiceEntry IP allocation controller). Ward hands out
//! the same addresses Istio can (third octet 0-255, fourth octet 1-254: no `.0`, no `.255`), but
//! with its own placement, chosen so that every host of the same config computes the same table
//! and adding an unrelated entry rarely moves an existing one:
//!
//! 1. Every candidate is keyed `namespace/host` and hashed with 32-bit FNV-1a; its home slot is
//!    the hash modulo the 65,024 usable addresses.
//! 2. Candidates are taken in order of their key (byte order). First pass: each takes its home
//!    slot if it is free; a slot that two keys want goes to the smaller key.
//! 3. Second pass, again in key order: each candidate that lost its home slot takes the next free
//!    slot after it (linear probing, wrapping at the end of the range).
//!
//! Addresses written explicitly in any entry's `spec.addresses` are never handed out. An entry
//! keeps its address when others are added unless a new key hashes to the same home slot and
//! sorts before it, or it had been probed into the slot a new key now owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The first address of the auto-allocation range, `240.240.0.0`.
pub const AUTO_RANGE_BASE: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 0);
/// The prefix length of the auto-allocation range (`/16`).
pub const AUTO_RANGE_PREFIX: u8 = 16;
/// Usable addresses in the range: 256 values of the third octet × 254 of the fourth (1-254).
pub const AUTO_RANGE_SLOTS: u32 = 256 * 254;

/// 32-bit FNV-1a (the hash Istio's allocator uses, `hash/fnv.New32a`).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The address of slot `slot` (0 ≤ slot < [`AUTO_RANGE_SLOTS`]).
pub fn slot_address(slot: u32) -> Ipv4Addr {
    let slot = slot % AUTO_RANGE_SLOTS;
    let third = u8::try_from(slot / 254).unwrap_or(u8::MAX);
    let fourth = u8::try_from(slot % 254 + 1).unwrap_or(u8::MAX);
    let [a, b, _, _] = AUTO_RANGE_BASE.octets();
    Ipv4Addr::new(a, b, third, fourth)
}

/// The slot of an address in the range, if it is one of the usable addresses.
fn address_slot(ip: IpAddr) -> Option<u32> {
    let IpAddr::V4(v4) = ip else { return None };
    let [a, b, c, d] = v4.octets();
    let [ba, bb, _, _] = AUTO_RANGE_BASE.octets();
    (a == ba && b == bb && (1..=254).contains(&d)).then(|| u32::from(c) * 254 + u32::from(d) - 1)
}

/// Allocates one address to each key (`namespace/host`), as the module docs describe, avoiding
/// `reserved` (explicit addresses). Keys past the range's capacity get none.
pub fn allocate(keys: &BTreeSet<String>, reserved: &[IpAddr]) -> BTreeMap<String, Ipv4Addr> {
    let mut taken: BTreeSet<u32> = reserved.iter().filter_map(|ip| address_slot(*ip)).collect();
    let mut out = BTreeMap::new();
    let mut losers = Vec::new();
    for key in keys {
        let home = fnv1a32(key.as_bytes()) % AUTO_RANGE_SLOTS;
        if taken.insert(home) {
            out.insert(key.clone(), slot_address(home));
        } else {
            losers.push((key, home));
        }
    }
    for (key, home) in losers {
        if taken.len() >= AUTO_RANGE_SLOTS as usize {
            break;
        }
        let mut slot = home;
        loop {
            slot = (slot + 1) % AUTO_RANGE_SLOTS;
            if taken.insert(slot) {
                out.insert(key.clone(), slot_address(slot));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        // FNV-1a 32 test vectors (draft-eastlake-fnv, section 8 / the reference implementation).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn slots_skip_network_and_broadcast_octets() {
        assert_eq!(slot_address(0), Ipv4Addr::new(240, 240, 0, 1));
        assert_eq!(slot_address(253), Ipv4Addr::new(240, 240, 0, 254));
        assert_eq!(slot_address(254), Ipv4Addr::new(240, 240, 1, 1));
        assert_eq!(
            slot_address(AUTO_RANGE_SLOTS - 1),
            Ipv4Addr::new(240, 240, 255, 254)
        );
        for slot in [0, 253, 254, 1000, AUTO_RANGE_SLOTS - 1] {
            assert_eq!(address_slot(slot_address(slot).into()), Some(slot));
        }
        assert_eq!(address_slot("240.240.3.0".parse().unwrap()), None);
        assert_eq!(address_slot("240.240.3.255".parse().unwrap()), None);
        assert_eq!(address_slot("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn allocation_is_deterministic_and_at_the_home_slot() {
        let k = keys(&[
            "clinic/db.clinic.svc.cluster.local",
            "clinic/web.clinic.svc.cluster.local",
        ]);
        let a = allocate(&k, &[]);
        assert_eq!(a, allocate(&k, &[]));
        for (key, ip) in &a {
            let home = fnv1a32(key.as_bytes()) % AUTO_RANGE_SLOTS;
            assert_eq!(*ip, slot_address(home), "{key}");
        }
    }

    #[test]
    fn unrelated_entries_do_not_move_existing_addresses() {
        let before = allocate(
            &keys(&["a/one.a.svc.cluster.local", "b/two.b.svc.cluster.local"]),
            &[],
        );
        let mut more: Vec<String> = (0..200)
            .map(|i| format!("x/svc{i}.x.svc.cluster.local"))
            .collect();
        more.push("a/one.a.svc.cluster.local".into());
        more.push("b/two.b.svc.cluster.local".into());
        let after = allocate(&more.into_iter().collect(), &[]);
        for (key, ip) in &before {
            assert_eq!(after.get(key), Some(ip), "{key}");
        }
        let distinct: BTreeSet<_> = after.values().collect();
        assert_eq!(distinct.len(), after.len(), "every key has its own address");
    }

    /// Two keys with the same home slot: found by search over generated names, so the test
    /// exercises a real collision rather than a contrived hash.
    fn colliding_pair() -> (String, String) {
        let mut seen: BTreeMap<u32, String> = BTreeMap::new();
        for i in 0.. {
            let key = format!("ns/s{i}.ns.svc.cluster.local");
            let home = fnv1a32(key.as_bytes()) % AUTO_RANGE_SLOTS;
            if let Some(first) = seen.insert(home, key.clone()) {
                return (first, key);
            }
        }
        unreachable!()
    }

    #[test]
    fn collisions_go_to_the_smaller_key_then_probe_forward() {
        let (x, y) = colliding_pair();
        let (small, large) = if x < y { (x, y) } else { (y, x) };
        let home = fnv1a32(small.as_bytes()) % AUTO_RANGE_SLOTS;
        let a = allocate(&keys(&[&large, &small]), &[]);
        assert_eq!(a[&small], slot_address(home));
        assert_eq!(a[&large], slot_address((home + 1) % AUTO_RANGE_SLOTS));
    }

    #[test]
    fn explicit_addresses_are_never_handed_out() {
        let key = "clinic/db.clinic.svc.cluster.local";
        let home = slot_address(fnv1a32(key.as_bytes()) % AUTO_RANGE_SLOTS);
        let a = allocate(&keys(&[key]), &[IpAddr::V4(home)]);
        assert_ne!(a[key], home);
    }
}
