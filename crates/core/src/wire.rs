//! Structs that travel as MessagePack arrays (the protocol's messages, the
//! reports inside them, the spool's records) and decode **tolerantly**, as
//! docs/protocol.md promises: a peer may append fields to any struct, so a
//! decoder skips trailing fields it does not know, and fields this build
//! added after protocol 1 may be absent (they take their documented
//! default). serde's derive cannot do the first (rmp-serde refuses an array
//! with elements left over), hence [`wire_struct!`].

/// Define a struct that serializes as serde's derive does (an array of its
/// fields, in order) and deserializes tolerantly. Fields of protocol 1 come
/// first and are required; fields in the `added { ... }` block were appended
/// later, each with the default it takes when a peer does not send it.
///
/// ```text
/// wire_struct! {
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct Welcome {
///         pub receiver_version: String,
///     }
///     added {
///         pub max_frame: u64 = 8 << 20,
///     }
/// }
/// ```
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fattr:meta])* $fvis:vis $field:ident : $fty:ty ),* $(,)?
        }
        $( added {
            $( $(#[$aattr:meta])* $avis:vis $afield:ident : $aty:ty = $default:expr ),* $(,)?
        } )?
    ) => {
        $(#[$attr])*
        #[derive(serde::Serialize)]
        $vis struct $name {
            $( $(#[$fattr])* $fvis $field : $fty, )*
            $($( $(#[$aattr])* $avis $afield : $aty, )*)?
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $name;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("an array of the fields of ", stringify!($name)))
                    }

                    #[allow(unused_mut, unused_variables, unused_assignments)]
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<$name, A::Error> {
                        let mut index = 0usize;
                        $(
                            let $field: $fty = match seq.next_element()? {
                                Some(value) => value,
                                None => {
                                    return Err(serde::de::Error::invalid_length(index, &self));
                                }
                            };
                            index += 1;
                        )*
                        $($(
                            let $afield: $aty = match seq.next_element()? {
                                Some(value) => value,
                                None => $default,
                            };
                        )*)?
                        // Fields a newer peer appended: skipped, not refused.
                        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                        Ok($name { $($field,)* $($($afield,)*)? })
                    }
                }
                d.deserialize_seq(Fields)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    wire_struct! {
        #[derive(Debug, PartialEq)]
        struct Old {
            a: u64,
            b: String,
        }
    }

    wire_struct! {
        #[derive(Debug, PartialEq)]
        struct New {
            a: u64,
            b: String,
        }
        added {
            c: u64 = 7,
            d: Option<String> = None,
        }
    }

    #[test]
    fn a_newer_peers_trailing_fields_are_skipped() {
        let new = New {
            a: 1,
            b: "x".into(),
            c: 9,
            d: Some("y".into()),
        };
        let bytes = rmp_serde::to_vec(&new).unwrap();
        let old: Old = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            old,
            Old {
                a: 1,
                b: "x".into()
            }
        );
    }

    #[test]
    fn an_older_peers_missing_added_fields_take_their_defaults() {
        let bytes = rmp_serde::to_vec(&Old {
            a: 1,
            b: "x".into(),
        })
        .unwrap();
        let new: New = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            new,
            New {
                a: 1,
                b: "x".into(),
                c: 7,
                d: None
            }
        );
    }

    #[test]
    fn a_missing_required_field_is_an_error_naming_the_struct() {
        let bytes = rmp_serde::to_vec(&(1u64,)).unwrap();
        let err = rmp_serde::from_slice::<Old>(&bytes).unwrap_err();
        assert!(err.to_string().contains("Old"), "{err}");
    }
}
