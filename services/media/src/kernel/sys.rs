//! The few `bpf(2)` commands the kernel fast path needs: a hash map, loading a program
//! and attaching it to an interface's ingress with a tcx link, and map element access.
//!
//! Written against the syscall directly because the Rust eBPF crates (aya, libbpf-rs) load
//! programs from ELF objects, which need a BPF compiler toolchain outside Cargo; the
//! program here is assembled in Rust (`insn`), so all that is left is these calls. Every
//! function owns its `bpf_attr` as a zeroed byte array, so fields the kernel does not
//! know from this code are always zero, as `bpf(2)` requires.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd` values.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_MAP_TYPE_HASH`.
const MAP_TYPE_HASH: u32 = 1;
/// `BPF_PROG_TYPE_SCHED_CLS`: the program type of tc and tcx classifiers.
const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS` (Linux 6.6+).
const ATTACH_TCX_INGRESS: u32 = 46;
/// Size of the attribute block passed; larger than every layout used here.
const ATTR_SIZE: usize = 128;

type Attr = [u8; ATTR_SIZE];

fn put_u32(attr: &mut Attr, at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut Attr, at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn put_name(attr: &mut Attr, at: usize, name: &str) {
    // BPF_OBJ_NAME_LEN is 16 with the NUL; the kernel accepts [A-Za-z0-9_.].
    let bytes: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .take(15)
        .collect();
    attr[at..at + bytes.len()].copy_from_slice(&bytes);
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable block of ATTR_SIZE bytes laid out as the kernel's
    // `union bpf_attr` for `cmd`; pointers inside it were set by the caller to buffers
    // that outlive this call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: a successful BPF_MAP_CREATE/PROG_LOAD/LINK_CREATE returns a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a hash map; the descriptor keeps it alive.
pub(crate) fn hash_map(name: &str, key: u32, value: u32, max: u32) -> io::Result<OwnedFd> {
    let mut a: Attr = [0; ATTR_SIZE];
    put_u32(&mut a, 0, MAP_TYPE_HASH);
    put_u32(&mut a, 4, key);
    put_u32(&mut a, 8, value);
    put_u32(&mut a, 12, max);
    // map_flags 16, inner_map_fd 20, numa_node 24, map_name 28..44
    put_name(&mut a, 28, name);
    fd_from(bpf(BPF_MAP_CREATE, &mut a)?)
}

/// Loads a classifier (GPL: the checksum and redirect helpers require it). On refusal the
/// error carries the verifier's log, which says which instruction was wrong: as libbpf
/// does, the load is tried without a log first (a verbose log can itself fail the load
/// when it outgrows its buffer) and repeated with one only to explain a refusal.
pub(crate) fn load_classifier(name: &str, insns: &[u8]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut a: Attr = [0; ATTR_SIZE];
    put_u32(&mut a, 0, PROG_TYPE_SCHED_CLS);
    put_u32(
        &mut a,
        4,
        u32::try_from(insns.len() / 8).unwrap_or(u32::MAX),
    );
    put_u64(&mut a, 8, insns.as_ptr() as u64);
    put_u64(&mut a, 16, license.as_ptr() as u64);
    // log_level 24, log_size 28, log_buf 32, kern_version 40, prog_flags 44, name 48..64
    put_name(&mut a, 48, name);
    if let Ok(rc) = bpf(BPF_PROG_LOAD, &mut a.clone()) {
        return fd_from(rc);
    }
    let mut log = vec![0u8; 256 * 1024];
    put_u32(&mut a, 24, 1);
    put_u32(&mut a, 28, u32::try_from(log.len()).unwrap_or(u32::MAX));
    put_u64(&mut a, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(rc) => fd_from(rc),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {}", tail.join(" | ")),
            ))
        }
    }
}

/// Attaches `prog` to the ingress of interface `ifindex` as a tcx link. The program stays
/// attached while the returned descriptor is open, so a relay that exits or crashes never
/// leaves it behind.
pub(crate) fn attach_tcx_ingress(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    let mut a: Attr = [0; ATTR_SIZE];
    put_u32(
        &mut a,
        0,
        u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX),
    );
    put_u32(&mut a, 4, ifindex);
    put_u32(&mut a, 8, ATTACH_TCX_INGRESS);
    // flags 12 = 0, relative_fd 16 = 0, expected_revision 24 = 0: append to the chain.
    fd_from(bpf(BPF_LINK_CREATE, &mut a)?)
}

fn elem_attr(map: &OwnedFd, key: &[u8], value: u64, flags: u64) -> Attr {
    let mut a: Attr = [0; ATTR_SIZE];
    put_u32(
        &mut a,
        0,
        u32::try_from(map.as_raw_fd()).unwrap_or(u32::MAX),
    );
    put_u64(&mut a, 8, key.as_ptr() as u64);
    put_u64(&mut a, 16, value);
    put_u64(&mut a, 24, flags);
    a
}

/// Inserts or replaces one element. Key and value sizes must be the map's.
pub(crate) fn update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = elem_attr(map, key, value.as_ptr() as u64, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Reads one element into `value`; `Ok(false)` when the key is absent.
pub(crate) fn lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = elem_attr(map, key, value.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads and removes one element in one step (hash maps, Linux 5.14+); `Ok(false)` when
/// the key is absent.
pub(crate) fn lookup_and_delete(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = elem_attr(map, key, value.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
