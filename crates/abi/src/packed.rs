//! Samples packed in one buffer (`put-samples` in `wit/collector.wit`, ABI
//! 1.1): metric families described once, then per sample its family's
//! number, its value and its label values. The SDK writes it ([`encode`]);
//! the host reads it ([`Reader`]), which checks every length against the
//! buffer before it trusts it.

/// A metric family: what its samples share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family<'a> {
    /// 0 gauge, 1 counter.
    pub kind: u8,
    pub name: &'a str,
    pub unit: &'a str,
    pub keys: Vec<&'a str>,
}

/// A sample as the SDK holds it, to be packed.
pub struct SampleRef<'a> {
    /// 0 gauge, 1 counter.
    pub kind: u8,
    pub name: &'a str,
    pub unit: &'a str,
    pub value: f64,
    pub labels: &'a [(String, String)],
}

/// What is wrong with a buffer: said to the operator in the run's UNKNOWN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed packed samples: {}", self.0)
    }
}

/// Pack `samples`. A family is a (kind, name, unit, label keys) run of
/// samples; consecutive samples of one family, the usual case, find it at
/// once.
pub fn encode<'a>(samples: impl IntoIterator<Item = SampleRef<'a>>) -> Vec<u8> {
    let mut families: Vec<Family<'a>> = Vec::new();
    let mut body = Vec::new();
    let mut count = 0u32;
    let mut last = 0usize;
    for s in samples {
        let same = |f: &Family<'_>| {
            f.kind == s.kind
                && f.name == s.name
                && f.unit == s.unit
                && f.keys.len() == s.labels.len()
                && f.keys.iter().zip(s.labels).all(|(k, (key, _))| *k == key)
        };
        let family = if families.get(last).is_some_and(same) {
            last
        } else if let Some(found) = families.iter().position(same) {
            found
        } else {
            families.push(Family {
                kind: s.kind,
                name: s.name,
                unit: s.unit,
                keys: s.labels.iter().map(|(k, _)| k.as_str()).collect(),
            });
            families.len() - 1
        };
        last = family;
        count += 1;
        body.extend_from_slice(&(family as u32).to_le_bytes());
        body.extend_from_slice(&s.value.to_le_bytes());
        for (_, value) in s.labels {
            put_str(&mut body, value);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64 * families.len() + 8);
    out.extend_from_slice(&(families.len() as u32).to_le_bytes());
    for f in &families {
        out.push(f.kind);
        put_str(&mut out, f.name);
        put_str(&mut out, f.unit);
        out.extend_from_slice(&(f.keys.len() as u32).to_le_bytes());
        for key in &f.keys {
            put_str(&mut out, key);
        }
    }
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Reads a packed buffer: its families at once, its samples one by one.
#[derive(Debug)]
pub struct Reader<'a> {
    families: Vec<Family<'a>>,
    rest: &'a [u8],
    left: u32,
}

/// The least bytes a sample takes (family number and value).
const SAMPLE_MIN: usize = 12;
/// The least bytes a family takes (kind and three lengths).
const FAMILY_MIN: usize = 13;

impl<'a> Reader<'a> {
    /// Read the families and the sample count of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, Malformed> {
        let mut rest = bytes;
        let count = take_u32(&mut rest, "the family count")? as usize;
        if count > rest.len() / FAMILY_MIN {
            return Err(Malformed(format!(
                "{count} families claimed in {} bytes",
                bytes.len()
            )));
        }
        let mut families = Vec::with_capacity(count);
        for i in 0..count {
            let kind = take(&mut rest, 1, "a family's kind")?[0];
            if kind > 1 {
                return Err(Malformed(format!(
                    "family {i}: kind {kind} (0 gauge, 1 counter)"
                )));
            }
            let name = take_str(&mut rest, "a family's name")?;
            let unit = take_str(&mut rest, "a family's unit")?;
            let keys = take_u32(&mut rest, "a family's key count")? as usize;
            if keys > rest.len() / 4 {
                return Err(Malformed(format!("family {i}: {keys} label keys claimed")));
            }
            let keys = (0..keys)
                .map(|_| take_str(&mut rest, "a label key"))
                .collect::<Result<_, _>>()?;
            families.push(Family {
                kind,
                name,
                unit,
                keys,
            });
        }
        let left = take_u32(&mut rest, "the sample count")?;
        if left as usize > rest.len() / SAMPLE_MIN {
            return Err(Malformed(format!(
                "{left} samples claimed in {} bytes",
                rest.len()
            )));
        }
        Ok(Reader {
            families,
            rest,
            left,
        })
    }

    /// The samples not read yet.
    pub fn samples_left(&self) -> u32 {
        self.left
    }

    /// The next sample: its family and value, its label values in `labels`
    /// (cleared first); `None` after the last, when no byte may be left.
    pub fn next_sample(
        &mut self,
        labels: &mut Vec<&'a str>,
    ) -> Result<Option<(&Family<'a>, f64)>, Malformed> {
        if self.left == 0 {
            if !self.rest.is_empty() {
                return Err(Malformed(format!(
                    "{} bytes after the last sample",
                    self.rest.len()
                )));
            }
            return Ok(None);
        }
        self.left -= 1;
        let number = take_u32(&mut self.rest, "a sample's family")? as usize;
        let family = self.families.get(number).ok_or_else(|| {
            Malformed(format!(
                "a sample of family {number}, of {} families",
                self.families.len()
            ))
        })?;
        let value = f64::from_le_bytes(
            take(&mut self.rest, 8, "a sample's value")?
                .try_into()
                .expect("8 bytes"),
        );
        labels.clear();
        for _ in &family.keys {
            labels.push(take_str(&mut self.rest, "a label value")?);
        }
        Ok(Some((family, value)))
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], Malformed> {
    if rest.len() < n {
        return Err(Malformed(format!("the buffer ends in {what}")));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u32(rest: &mut &[u8], what: &str) -> Result<u32, Malformed> {
    Ok(u32::from_le_bytes(
        take(rest, 4, what)?.try_into().expect("4 bytes"),
    ))
}

fn take_str<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a str, Malformed> {
    let len = take_u32(rest, what)? as usize;
    std::str::from_utf8(take(rest, len, what)?)
        .map_err(|_| Malformed(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A sample read back: its family, value and label values.
    type Read<'a> = (Family<'a>, f64, Vec<&'a str>);

    fn read_all(bytes: &[u8]) -> Result<Vec<Read<'_>>, Malformed> {
        let mut reader = Reader::new(bytes)?;
        let mut out = Vec::new();
        let mut values = Vec::new();
        while let Some((family, value)) = reader.next_sample(&mut values)? {
            out.push((family.clone(), value, values.clone()));
        }
        Ok(out)
    }

    #[test]
    fn samples_come_back_as_packed_with_each_family_once() {
        let cpu0 = labels(&[("cpu", "0"), ("mode", "user")]);
        let cpu1 = labels(&[("cpu", "1"), ("mode", "user")]);
        let none = labels(&[]);
        let samples = [
            ("jiffies", "", 1u8, 1.5, &cpu0),
            ("jiffies", "", 1, 2.5, &cpu1),
            ("load1", "", 0, 0.25, &none),
            ("jiffies", "", 1, -3.0, &cpu0),
        ];
        let bytes = encode(
            samples
                .iter()
                .map(|(name, unit, kind, value, labels)| SampleRef {
                    kind: *kind,
                    name,
                    unit,
                    value: *value,
                    labels,
                }),
        );
        let read = read_all(&bytes).unwrap();
        assert_eq!(read.len(), 4);
        assert_eq!(Reader::new(&bytes).unwrap().families.len(), 2);
        for ((name, unit, kind, value, labels), (family, got, values)) in samples.iter().zip(&read)
        {
            assert_eq!(
                (family.name, family.unit, family.kind),
                (*name, *unit, *kind)
            );
            assert_eq!(got, value);
            let pairs: Vec<(String, String)> = family
                .keys
                .iter()
                .zip(values)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(&pairs, *labels);
        }
    }

    #[test]
    fn every_cut_and_every_lie_is_refused_not_trusted() {
        let l = labels(&[("k", "v")]);
        let bytes = encode([SampleRef {
            kind: 0,
            name: "x",
            unit: "u",
            value: 1.0,
            labels: &l,
        }]);
        // Every prefix is refused, never read as fewer samples.
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(
            read_all(&trailing)
                .unwrap_err()
                .0
                .contains("after the last sample")
        );
        // Counts larger than the buffer could hold allocate nothing.
        let huge = [u32::MAX.to_le_bytes(), [0; 4]].concat();
        assert!(
            Reader::new(&huge)
                .unwrap_err()
                .0
                .contains("families claimed")
        );
        let no_family = [0u32.to_le_bytes(), u32::MAX.to_le_bytes()].concat();
        assert!(
            Reader::new(&no_family)
                .unwrap_err()
                .0
                .contains("samples claimed")
        );
        // A family number out of range, a bad kind, bytes that are not UTF-8.
        let mut wrong_family = bytes.clone();
        let at = bytes.len() - (4 + 8 + 4 + 1);
        wrong_family[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        assert!(
            read_all(&wrong_family)
                .unwrap_err()
                .0
                .contains("family 7, of 1")
        );
        let mut kind = bytes.clone();
        kind[4] = 9;
        assert!(read_all(&kind).unwrap_err().0.contains("kind 9"));
        let mut utf8 = bytes.clone();
        utf8[9] = 0xff; // the name's byte
        assert!(read_all(&utf8).unwrap_err().0.contains("not UTF-8"));
    }
}
