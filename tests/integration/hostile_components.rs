//! Hostile components no compiler emits: the lean misbehave fixture with
//! extra core instances appended, of a module holding two memories that its
//! start function touches page by page. A component may instantiate many
//! core modules, each with memories and tables of its own; the memory cap
//! and the shared instance pool must hold against all of them together.

use crate::common::{agent, build_plugins, fixture, plugin_run, status};
use std::path::PathBuf;

/// Bytes of a wasm page.
const PAGE: u32 = 64 << 10;

fn uleb(mut n: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut n: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A section: its id, then its body with the body's length.
fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    uleb(body.len() as u32, out);
    out.extend_from_slice(body);
}

/// A core module with two memories of `pages` pages each, whose start
/// function writes a byte into every 4 KiB of both, so that each is
/// resident in full.
fn two_memories(pages: u32) -> Vec<u8> {
    let mut code = vec![1, 1, 0x7f]; // one local: the address
    code.extend([0x03, 0x40]); // loop
    for memory in [0, 1] {
        // i32.store8 (local.get 0) (i32.const 1), in memory `memory`
        code.extend([0x20, 0, 0x41, 1, 0x3a, 0x40, memory, 0]);
    }
    code.extend([0x20, 0, 0x41]); // local.get 0, i32.const 4096
    sleb(4096, &mut code);
    code.extend([0x6a, 0x22, 0, 0x41]); // i32.add, local.tee 0, i32.const end
    sleb(i64::from(pages) * i64::from(PAGE), &mut code);
    code.extend([0x49, 0x0d, 0, 0x0b, 0x0b]); // i32.lt_u, br_if 0, end, end
    let mut memories = vec![2];
    for _ in 0..2 {
        memories.push(0);
        uleb(pages, &mut memories);
    }
    let mut bodies = vec![1];
    uleb(code.len() as u32, &mut bodies);
    bodies.extend(code);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // type: [] -> []
    section(3, &[1, 0], &mut module); // one function
    section(5, &memories, &mut module);
    section(8, &[0], &mut module); // start: function 0
    section(10, &bodies, &mut module);
    module
}

/// The lean misbehave fixture, with `instances` instances of
/// [`two_memories`] of `pages` pages appended: written to a file in `dir`.
fn bloated_fixture(dir: &tempfile::TempDir, pages: u32, instances: u32) -> PathBuf {
    build_plugins();
    let mut component = std::fs::read(fixture("misbehave-lean")).unwrap();
    // The new module's index: the core modules the component defines.
    let (mut at, mut modules) = (8, 0);
    while at < component.len() {
        let id = component[at];
        at += 1;
        let (mut size, mut shift) = (0usize, 0);
        loop {
            let byte = component[at];
            at += 1;
            size |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        modules += u32::from(id == 1);
        at += size;
    }
    section(1, &two_memories(pages), &mut component);
    let mut instantiations = Vec::new();
    uleb(instances, &mut instantiations);
    for _ in 0..instances {
        instantiations.push(0); // instantiate
        uleb(modules, &mut instantiations);
        instantiations.push(0); // no arguments
    }
    section(2, &instantiations, &mut component);
    let path = dir.path().join(format!("bloated-{pages}x{instances}.wasm"));
    std::fs::write(&path, component).unwrap();
    path
}

/// `agent plugin run` on `plugin`: whether it succeeded, and its stderr.
fn try_run(plugin: &std::path::Path) -> (bool, String) {
    let (output, _) = agent(&[
        "plugin",
        "run",
        plugin.to_str().unwrap(),
        "--format",
        "json",
    ]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn memories_of_every_core_instance_count_against_one_cap() {
    let dir = tempfile::tempdir().unwrap();
    // 8 instances of two 30 MiB memories: 480 MiB, each memory below the
    // default 32 MiB cap. It loaded and ran at 510 MiB resident before the
    // cap counted the store's memories together.
    let bloated = bloated_fixture(&dir, 480, 8);
    let (ran, log) = try_run(&bloated);
    assert!(!ran, "a plugin holding 480 MiB ran under a 32 MiB cap");
    assert!(
        log.contains("describe failed: memory limit 32 MiB reached"),
        "{log}"
    );
    // One instance of two 12 MiB memories (24 MiB) stays within it.
    let within = bloated_fixture(&dir, 192, 1);
    let (level, text) = status(&plugin_run(&within, &[]).0);
    assert_eq!(level, "OK", "{text}");
}

#[test]
fn one_plugin_cannot_take_the_shared_instance_pool() {
    let dir = tempfile::tempdir().unwrap();
    // 60 instances of two one-page memories: 120 of the pool's 128 memory
    // slots, which every run of the agent shares, for as long as it runs.
    let hoarder = bloated_fixture(&dir, 1, 60);
    let (ran, log) = try_run(&hoarder);
    assert!(!ran, "a plugin took 120 memories of the shared pool");
    assert!(log.contains("describe failed: "), "{log}");
    assert!(
        log.contains("resource limit exceeded: memory count too high at 5"),
        "{log}"
    );
}
