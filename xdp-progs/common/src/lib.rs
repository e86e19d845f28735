//! Types shared by the XDP programs (kernel side) and userspace, and the enums every part of
//! skiff names the same way (drop reasons, frontend kinds, algorithms).
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding and carries a size
//! assertion, so the kernel and userspace views cannot drift apart. Userspace gets `aya::Pod`
//! and `bytemuck::Pod` through the `user` feature.
//!
//! Byte order: addresses and ports stay in network byte order, as they sit in the packet, so
//! the XDP code copies them without swapping (as Cilium and Katran do). Everything else
//! (counters, ids, lengths, prefix lengths) is host order. Each field says which.
//!
//! Enums live in maps as their raw code: a map value must be valid for any bit pattern, so
//! the field holds the code and the enum's `from_u8` decodes it. `_pad` fields are part of
//! hashed keys: keep them zero. The `serde` feature serialises the enums by name, for the
//! local API.
#![cfg_attr(not(test), no_std)]

/// Defines a `#[repr($repr)]` enum whose variants carry a stable code, a kebab-case name and
/// a one-line description, with `ALL`, `COUNT`, `code`, `$from`, `name`, `description` and
/// `Display` (the name).
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, fn $from:ident {
            $($(#[$vmeta:meta])* $variant:ident = $code:literal, $label:literal, $desc:literal;)+
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $(#[doc = $desc] $(#[$vmeta])* $variant = $code,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($code),+].len()] = [$($name::$variant),+];

            /// One more than the highest code: the length of an array indexed by code.
            pub const COUNT: usize = {
                let mut count = 0;
                let mut i = 0;
                while i < Self::ALL.len() {
                    if Self::ALL[i] as usize >= count {
                        count = Self::ALL[i] as usize + 1;
                    }
                    i += 1;
                }
                count
            };

            /// The stable code, as stored in maps, counters and events.
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The variant with this code, if any.
            pub const fn $from(code: $repr) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The variant called `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|x| x.name() == name)
            }

            /// Kebab-case name, for metrics labels, flows and the CLI.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// One sentence saying what the variant means.
            pub const fn description(self) -> &'static str {
                match self {
                    $($name::$variant => $desc,)+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl core::str::FromStr for $name {
            type Err = $crate::UnknownName;
            fn from_str(s: &str) -> Result<Self, $crate::UnknownName> {
                Self::from_name(s).ok_or($crate::UnknownName { allowed: &[$($label),+] })
            }
        }

        /// Serialised by name (stable across versions, unlike a position), so JSON and map
        /// keys read as they print.
        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("the name of a ", stringify!($name)))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_name(v).ok_or_else(|| E::unknown_variant(v, &[$($label),+]))
                    }
                }
                d.deserialize_str(Name)
            }
        }

        #[cfg(test)]
        impl $name {
            /// Codes round-trip and fit in `COUNT`; names are unique and kebab-case.
            fn assert_well_formed() {
                for (i, variant) in Self::ALL.iter().enumerate() {
                    assert_eq!(Self::$from(variant.code()), Some(*variant));
                    assert!((variant.code() as usize) < Self::COUNT);
                    assert!(crate::tests::is_kebab(variant.name()), "{:?}", variant.name());
                    assert!(!variant.description().is_empty());
                    for earlier in &Self::ALL[..i] {
                        assert_ne!(earlier.code(), variant.code());
                        assert_ne!(earlier.name(), variant.name());
                    }
                }
                let decoded = (0..=Self::COUNT)
                    .filter_map(|code| <$repr>::try_from(code).ok())
                    .filter(|code| Self::$from(*code).is_some())
                    .count();
                assert_eq!(decoded, Self::ALL.len(), "a code outside ALL decodes");
            }
        }
    };
}

/// Implements `aya::Pod` (feature `user`) for map types that derive `bytemuck::Pod`, and
/// tests that each round-trips through its bytes.
macro_rules! pod {
    ($($t:ident),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            const _: () = {
                const fn derives_bytemuck_pod<T: bytemuck::Pod>() {}
                derives_bytemuck_pod::<$t>()
            };

            #[cfg(feature = "user")]
            // SAFETY: the type derives `bytemuck::Pod` (checked just above), whose derive
            // proves at compile time that it is `repr(C)` or `repr(transparent)`, has no
            // padding and only `Pod` fields: every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )+

        #[cfg(all(test, feature = "user"))]
        mod pod_tests {
            use super::*;

            $(
                #[test]
                #[allow(non_snake_case)]
                fn $t() {
                    assert_eq!(bytemuck::bytes_of(&<$t>::default()), [0; size_of::<$t>()], "default is zero");
                    let pattern = [0xa5; size_of::<$t>()];
                    let value: $t = bytemuck::pod_read_unaligned(&pattern);
                    assert_eq!(bytemuck::bytes_of(&value), pattern);
                }
            )+
        }
    };
}

pub mod config;
pub mod conntrack;
pub mod counter;
pub mod drop_reason;
pub mod endpoint;
pub mod event;
pub mod identity;
pub mod lb;
pub mod lpm;
pub mod meta;
pub mod names;
pub mod proto;
pub mod sock;
pub mod tunnel;

pub use counter::{Counter, XdpAction};

/// A name that is no variant's (parsing a `code_enum` from text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub allowed: &'static [&'static str],
}

impl core::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("expected one of:")?;
        for name in self.allowed {
            write!(f, " {name}")?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownName {}
pub use drop_reason::DropReason;
pub use names::{maps, programs};

#[cfg(test)]
mod tests {
    /// Lowercase ASCII words joined by single dashes.
    pub fn is_kebab(name: &str) -> bool {
        !name.is_empty()
            && name.split('-').all(|word| {
                !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    }

    #[test]
    fn kebab() {
        assert!(is_kebab("ipv4-bad-checksum"));
        for bad in ["", "-a", "a-", "a--b", "Ipv4", "a_b", "a b"] {
            assert!(!is_kebab(bad), "{bad:?}");
        }
    }
}
