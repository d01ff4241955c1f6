use super::*;
use sandglass_core::report::MetricKind;

fn trigger(fire: &str, recover: Option<&str>, hold_s: u64) -> Arc<Trigger> {
    let trigger = Trigger {
        name: "cpu_high".into(),
        metric: "cpu_usage".into(),
        labels: vec![("cpu".into(), "total".into())],
        fire: fire.parse().unwrap(),
        recover: recover.map(|r| r.parse().unwrap()),
        hold: Duration::from_secs(hold_s),
        severity: Level::Crit,
        message: "{host} {trigger} {labels} at {value} ({severity})".into(),
    };
    trigger.validate().unwrap();
    Arc::new(trigger)
}

fn sample(value: f64, cpu: &str) -> Sample {
    Sample {
        name: "cpu_usage".into(),
        value,
        kind: MetricKind::Gauge,
        unit: "%".into(),
        labels: vec![
            ("cpu".into(), cpu.into()),
            ("host_kind".into(), "vm".into()),
        ],
    }
}

/// Feed one value every 10 s from t = 10 s; the fired (true) or recovered
/// (false) transitions, with the second they happened at.
fn feed(engine: &mut Engine, trigger: &Arc<Trigger>, values: &[f64]) -> Vec<(bool, u64)> {
    let mut seen = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let t = (i as u64 + 1) * 10_000;
        for tr in engine.observe(
            "web1",
            "cpu",
            std::slice::from_ref(trigger),
            &[sample(*v, "total")],
            t,
        ) {
            seen.push((tr.fired, t / 1000));
        }
    }
    seen
}

#[test]
fn a_threshold_fires_once_and_recovers_once() {
    let mut engine = Engine::default();
    let t = trigger("last > 90", None, 0);
    let seen = feed(&mut engine, &t, &[50.0, 95.0, 97.0, 99.0, 40.0, 30.0]);
    assert_eq!(seen, vec![(true, 20), (false, 50)]);
}

#[test]
fn hysteresis_keeps_a_hovering_value_from_flapping() {
    let hovering = [95.0, 89.0, 91.0, 88.0, 92.0, 70.0, 91.0];
    // Without a recovery condition every crossing is a transition.
    let mut engine = Engine::default();
    let plain = feed(&mut engine, &trigger("last > 90", None, 0), &hovering);
    assert_eq!(plain.len(), 7);
    // With one, it stays firing until the value is clearly back.
    let mut engine = Engine::default();
    let damped = feed(
        &mut engine,
        &trigger("last > 90", Some("last < 80"), 0),
        &hovering,
    );
    assert_eq!(damped, vec![(true, 10), (false, 60), (true, 70)]);
}

#[test]
fn for_keeps_a_short_spike_from_firing() {
    let mut engine = Engine::default();
    let t = trigger("last > 90", None, 25);
    // A 20 s spike (two values) never fires; a lasting one fires once it
    // has held 25 s: pending at 50 s, fired at the first value at or past 75 s.
    let seen = feed(
        &mut engine,
        &t,
        &[95.0, 96.0, 50.0, 50.0, 95.0, 95.0, 95.0, 95.0, 10.0],
    );
    assert_eq!(seen, vec![(true, 80), (false, 90)]);
}

#[test]
fn window_functions_drive_the_state() {
    let mut engine = Engine::default();
    // The mean of the last three values.
    let t = trigger("avg(3) > 50", None, 0);
    let seen = feed(&mut engine, &t, &[100.0, 100.0, 10.0, 10.0, 10.0]);
    // 3 values needed: fired at 30 s (70), recovered at 40 s (40).
    assert_eq!(seen, vec![(true, 30), (false, 40)]);
    let mut engine = Engine::default();
    let t = trigger("rate(30s) > 2", None, 0);
    let seen = feed(
        &mut engine,
        &t,
        &[0.0, 10.0, 20.0, 100.0, 110.0, 120.0, 130.0],
    );
    // +80 in 10 s lifts the 30 s rate above 2/s until it leaves the window.
    assert_eq!(seen, vec![(true, 40), (false, 70)]);
}

#[test]
fn labels_select_the_series_and_each_series_has_its_own_state() {
    let mut engine = Engine::default();
    let t = trigger("last > 90", None, 0);
    // cpu=0 does not carry cpu=total: ignored.
    assert!(
        engine
            .observe(
                "web1",
                "cpu",
                std::slice::from_ref(&t),
                &[sample(99.0, "0")],
                1_000
            )
            .is_empty()
    );
    let mut all = (*t).clone();
    all.labels.clear();
    let all = Arc::new(all);
    let fired = engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&all),
        &[sample(99.0, "0"), sample(99.0, "1"), sample(5.0, "2")],
        1_000,
    );
    assert_eq!(fired.len(), 2);
    assert!(
        fired[0].message.contains("cpu=0,host_kind=vm at 99 (CRIT)"),
        "{}",
        fired[0].message
    );
    assert_eq!(engine.firing("web1").len(), 2);
    assert!(engine.firing("web2").is_empty());
    // A reload that drops the trigger drops its series.
    engine.retain(|_, _, _| false);
    assert!(engine.firing("web1").is_empty());
}

#[test]
fn nodata_fires_on_silence_and_recovers_when_data_returns() {
    let mut engine = Engine::default();
    let t = trigger("nodata(60s)", None, 0);
    engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&t),
        &[sample(1.0, "total")],
        10_000,
    );
    assert!(engine.tick(60_000).is_empty());
    let fired = engine.tick(70_000);
    assert_eq!(fired.len(), 1);
    assert!(
        fired[0].fired && fired[0].message.contains("no data"),
        "{fired:?}"
    );
    assert!(engine.tick(80_000).is_empty(), "fires once");
    let recovered = engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&t),
        &[sample(1.0, "total")],
        90_000,
    );
    assert_eq!(recovered.len(), 1);
    assert!(!recovered[0].fired);
}

#[test]
fn a_resent_report_does_not_count_twice() {
    let mut engine = Engine::default();
    let t = trigger("change > 5", None, 0);
    let once = engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&t),
        &[sample(1.0, "total")],
        10_000,
    );
    let jump = engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&t),
        &[sample(10.0, "total")],
        20_000,
    );
    let again = engine.observe(
        "web1",
        "cpu",
        std::slice::from_ref(&t),
        &[sample(10.0, "total")],
        20_000,
    );
    assert!(once.is_empty() && again.is_empty());
    assert_eq!(jump.len(), 1);
}

#[test]
fn validation_names_what_cannot_work() {
    let mut t = (*trigger("last > 90", None, 0)).clone();
    t.severity = Level::Ok;
    assert!(t.validate().unwrap_err().contains("WARN or CRIT"));
    let mut t = (*trigger("nodata(1m)", None, 0)).clone();
    t.recover = Some("last > 1".parse().unwrap());
    assert!(t.validate().unwrap_err().contains("remove `recover`"));
    let mut t = (*trigger("last > 1", None, 0)).clone();
    t.recover = Some("nodata(1m)".parse().unwrap());
    assert!(t.validate().is_err());
}
