//! Filesystem collector: for each mounted real filesystem in
//! `/proc/self/mounts`, its size, free and available bytes and its inodes
//! (`statvfs`, through the lean host's `fs-usage`: WASI has none, so this is
//! a lean collector, built for `wasm32-unknown-unknown`).
//!
//! Like node_exporter's `filesystem` collector it skips pseudo filesystems
//! (proc, sysfs, cgroup, tmpfs mounts under `/dev`, ...) and the mount points
//! of `/dev`, `/proc`, `/sys` and container storage, and reports each mount
//! point once (the mount on top, the last listed). Labels: `mountpoint`,
//! `fstype`, `device`.
//!
//! Params: `warn` and `crit`: thresholds on the fullest filesystem's used
//! percentage (of the space available to users: `100 * (1 - avail / (size -
//! free + avail))`, as `df` computes it). None by default.

use sandglass_plugin_sdk::{Collector, Context, Description, Metric, Result, host, proc};

pub struct Filesystem;

/// Filesystem types that hold no disk space of their own (node_exporter's
/// default `fs-types-exclude`).
const PSEUDO_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
];

/// Mount points skipped with everything below them (node_exporter's
/// default `mount-points-exclude`).
const SKIPPED_TREES: &[&str] = &["/dev", "/proc", "/sys"];

/// Mount points skipped below these (container layers and credentials).
const SKIPPED_BELOW: &[&str] = &[
    "/run/credentials/",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

/// One line of `/proc/self/mounts`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

impl Collector for Filesystem {
    fn describe() -> Description {
        Description::new("filesystem", env!("CARGO_PKG_VERSION"))
            .interval_seconds(60)
            .metric(Metric::gauge("filesystem_size", "bytes", "total size"))
            .metric(Metric::gauge(
                "filesystem_free",
                "bytes",
                "free bytes, including those reserved for root",
            ))
            .metric(Metric::gauge(
                "filesystem_avail",
                "bytes",
                "free bytes available to unprivileged users",
            ))
            .metric(Metric::gauge("filesystem_files", "", "total inodes"))
            .metric(Metric::gauge("filesystem_files_free", "", "free inodes"))
    }

    fn collect(ctx: &mut Context) -> Result<()> {
        let mounts = real_mounts(&proc::read("/proc/self/mounts")?);
        let mut usages = Vec::with_capacity(mounts.len());
        let mut failed = Vec::new();
        for mount in mounts {
            match host::fs_usage(&mount.mount_point) {
                Ok(usage) => usages.push((mount, usage)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        report(&usages, &failed, ctx)
    }
}

sandglass_plugin_sdk::export_collector!(Filesystem);

/// The real filesystems in `mounts` text, each mount point once (the last
/// listed: the one on top), in the order first seen.
pub fn real_mounts(mounts: &str) -> Vec<Mount> {
    let mut real: Vec<Mount> = Vec::new();
    for line in mounts.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(device), Some(mount_point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount = Mount {
            device: proc::unescape(device),
            mount_point: proc::unescape(mount_point),
            fstype: fstype.to_owned(),
        };
        if skipped(&mount) {
            real.retain(|m| m.mount_point != mount.mount_point);
            continue;
        }
        match real.iter_mut().find(|m| m.mount_point == mount.mount_point) {
            Some(earlier) => *earlier = mount,
            None => real.push(mount),
        }
    }
    real
}

fn skipped(mount: &Mount) -> bool {
    let point = mount.mount_point.as_str();
    PSEUDO_TYPES.contains(&mount.fstype.as_str())
        || SKIPPED_TREES.iter().any(|tree| {
            point == *tree || point.strip_prefix(tree).is_some_and(|r| r.starts_with('/'))
        })
        || SKIPPED_BELOW
            .iter()
            .any(|below| point.strip_prefix(below).is_some_and(|r| !r.is_empty()))
}

/// Samples and status from the usages read; `failed` names the mounts that
/// could not be read.
pub fn report(
    usages: &[(Mount, host::FsUsage)],
    failed: &[String],
    ctx: &mut Context,
) -> Result<()> {
    let warn: f64 = ctx.param_or("warn", f64::INFINITY)?;
    let crit: f64 = ctx.param_or("crit", f64::INFINITY)?;
    let mut fullest: Option<(f64, &str)> = None;
    for (mount, usage) in usages {
        let values = [
            ("filesystem_size", usage.size_bytes, "bytes"),
            ("filesystem_free", usage.free_bytes, "bytes"),
            ("filesystem_avail", usage.avail_bytes, "bytes"),
            ("filesystem_files", usage.files, ""),
            ("filesystem_files_free", usage.files_free, ""),
        ];
        for (name, value, unit) in values {
            ctx.gauge(name, value as f64)
                .unit(unit)
                .label("mountpoint", &mount.mount_point)
                .label("fstype", &mount.fstype)
                .label("device", &mount.device);
        }
        let used = used_percent(usage);
        if fullest.is_none_or(|(most, _)| used > most) {
            fullest = Some((used, &mount.mount_point));
        }
    }
    let unread = match failed {
        [] => String::new(),
        [first, ..] => format!("; {} not readable, first {first}", failed.len()),
    };
    match fullest {
        Some((used, point)) => ctx.status_by_levels(
            used,
            warn,
            crit,
            format!(
                "{} filesystems, fullest {point} {used:.1}% used{unread}",
                usages.len()
            ),
        ),
        None => ctx.ok(format!("no real filesystems mounted{unread}")),
    }
    Ok(())
}

/// Used space as `df` shows it: of the space users can have.
pub fn used_percent(usage: &host::FsUsage) -> f64 {
    let used = usage.size_bytes.saturating_sub(usage.free_bytes);
    let usable = used + usage.avail_bytes;
    if usable == 0 {
        return 0.0;
    }
    100.0 * used as f64 / usable as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_plugin_sdk::Level;

    const MOUNTS: &str = "proc /proc proc rw 0 0\n\
        sysfs /sys sysfs rw 0 0\n\
        /dev/vda / ext4 rw 0 0\n\
        tmpfs /dev/shm tmpfs rw 0 0\n\
        cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
        /dev/vdb /mnt/my\\040data xfs rw 0 0\n\
        overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0\n\
        tmpfs /run tmpfs rw 0 0\n\
        /dev/vdc /mnt/my\\040data ext4 rw 0 0\n";

    #[test]
    fn pseudo_filesystems_and_system_trees_are_skipped_and_the_top_mount_kept() {
        let mounts = real_mounts(MOUNTS);
        let points: Vec<(&str, &str, &str)> = mounts
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fstype.as_str(), m.device.as_str()))
            .collect();
        assert_eq!(
            points,
            [
                ("/", "ext4", "/dev/vda"),
                ("/mnt/my data", "ext4", "/dev/vdc"),
                ("/run", "tmpfs", "tmpfs")
            ]
        );
    }

    #[test]
    fn usage_becomes_labelled_samples_and_the_fullest_sets_the_status() {
        let usage = |size, free, avail| host::FsUsage {
            size_bytes: size,
            free_bytes: free,
            avail_bytes: avail,
            files: 100,
            files_free: 40,
        };
        let usages = vec![
            (
                real_mounts("/dev/vda / ext4 rw 0 0").remove(0),
                usage(1000, 300, 200),
            ),
            (
                real_mounts("tmpfs /run tmpfs rw 0 0").remove(0),
                usage(1000, 900, 900),
            ),
        ];
        let mut ctx = Context::new(vec![("warn".into(), "75".into())], None);
        report(&usages, &["/x: denied".into()], &mut ctx).unwrap();
        let root = [
            ("mountpoint", "/"),
            ("fstype", "ext4"),
            ("device", "/dev/vda"),
        ];
        assert_eq!(ctx.value("filesystem_size", &root), Some(1000.0));
        assert_eq!(ctx.value("filesystem_avail", &root), Some(200.0));
        assert_eq!(
            ctx.value("filesystem_files_free", &[("mountpoint", "/run")]),
            Some(40.0)
        );
        let (level, text) = ctx.current_status().unwrap();
        // 700 used of 900 usable: 77.8 %.
        assert_eq!(level, Level::Warn, "{text}");
        assert!(
            text.starts_with("2 filesystems, fullest / 77.8% used; 1 not readable"),
            "{text}"
        );
    }
}
