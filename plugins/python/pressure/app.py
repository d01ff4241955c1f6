"""pressure: a Sandglass collector plugin in Python (componentize-py).

Reads Linux pressure stall information (/proc/pressure/{cpu,memory,io}) and
reports, per resource and scope ("some", "full"), the stall time since boot
(counter, seconds) and the 10-second average (gauge, percent). WARN when any
"some" 10-second average is above the `warn` parameter (percent, default 80).

It implements the same WIT world as the Rust plugins (wit/collector.wit), so
the agent calls it exactly like them. Build: scripts/build-python-plugin.sh.
"""

from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

RESOURCES = ("cpu", "memory", "io")


def parse(resource: str, text: str) -> List[types.Sample]:
    """Samples from one /proc/pressure file, e.g.
    `some avg10=1.00 avg60=0.50 avg300=0.10 total=12345` (total in µs)."""
    samples = []
    for line in text.splitlines():
        scope, *fields = line.split()
        values = dict(field.split("=", 1) for field in fields)
        labels = [("resource", resource), ("scope", scope)]
        samples.append(types.Sample("pressure_stall_seconds_total",
                                    int(values["total"]) / 1e6,
                                    types.MetricKind.COUNTER, "seconds", labels))
        samples.append(types.Sample("pressure_avg10_percent",
                                    float(values["avg10"]),
                                    types.MetricKind.GAUGE, "percent", labels))
    return samples


class Plugin(exports.Plugin):
    def describe(self) -> types.Description:
        return types.Description(
            name="pressure",
            version="1.0.0",
            grants=[],
            interval_seconds=60,
            metrics=[
                types.MetricInfo("pressure_stall_seconds_total", types.MetricKind.COUNTER,
                                 "seconds", "Time some (or all) tasks stalled on the resource"),
                types.MetricInfo("pressure_avg10_percent", types.MetricKind.GAUGE,
                                 "percent", "Share of the last 10 s with stalled tasks"),
            ],
        )

    def collect(self, params: List[Tuple[str, str]], state: Optional[bytes]) -> types.Collection:
        settings = dict(params)
        try:
            warn = float(settings.get("warn", "80"))
        except ValueError:
            raise Err(f"parameter warn must be a number (percent), got {settings['warn']!r}")
        samples = []
        for resource in RESOURCES:
            try:
                with open(f"/proc/pressure/{resource}") as f:
                    samples.extend(parse(resource, f.read()))
            except OSError as e:
                raise Err(f"cannot read /proc/pressure/{resource}: {e.strerror} "
                          "(the kernel needs CONFIG_PSI and psi=1)")
        worst = max((s for s in samples if s.name == "pressure_avg10_percent"
                     and ("scope", "some") in s.labels), key=lambda s: s.value)
        resource = dict(worst.labels)["resource"]
        text = f"{resource} pressure {worst.value:.1f}% over 10s"
        level = types.Level.WARN if worst.value > warn else types.Level.OK
        return types.Collection(samples, types.Status(level, text), None)
