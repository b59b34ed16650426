//! [`config_section!`]: a configuration section whose defaults are written once.
//!
//! A field's default is written beside the field as the TOML value an operator would put
//! in the file (`= 100`, `= "pretty"`, `= ["bearer"]`). From that one token the macro makes
//! both the sentence "Default: `100`." at the end of the field's documentation and the
//! section's `Default` impl, which reads the same text through figment and serde exactly
//! as a value from a file is read. The documented default is therefore the default, and a
//! default the type cannot hold fails `Config::default()` (a unit test) instead of lying.
//!
//! A field without `= …` (an `Option`, a list, a nested section) takes its type's
//! `Default`: unset, empty, or the nested section's own defaults.
//!
//! This module is a leaf (it names no other Keygate module), so the config structs that
//! live beside their subsystems (`hashing`, `envoy::settings`, `service::quota`) use it
//! without depending on `config`.

/// Declares a config struct whose fields carry their defaults; see the module docs.
///
/// The struct's own attributes (derives, `#[serde(default, deny_unknown_fields)]`, docs)
/// are written as usual and passed through unchanged.
macro_rules! config_section {
    (@default $ty:ty) => {
        ::core::default::Default::default()
    };
    (@default $ty:ty, $default:tt) => {
        $crate::config_section::parse_default::<$ty>(stringify!($default))
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty $(= $default:tt)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $(
                    #[doc = ""]
                    #[doc = concat!("Default: `", stringify!($default), "`.")]
                )?
                $field_vis $field: $ty,
            )*
        }

        impl ::core::default::Default for $name {
            fn default() -> Self {
                $name {
                    $(
                        $field: $crate::config_section::config_section!(
                            @default $ty $(, $default)?
                        ),
                    )*
                }
            }
        }
    };
}
pub(crate) use config_section;

/// A default written as a TOML value, read as a `T` the way a configuration file's value is.
///
/// # Panics
/// When the text is not a valid `T`: a mistake in a `config_section!` declaration, caught
/// by any test that builds the section's default.
pub(crate) fn parse_default<T: serde::de::DeserializeOwned>(toml_value: &str) -> T {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(&format!("value = {toml_value}")))
        .extract_inner("value")
        .unwrap_or_else(|e| panic!("the default `{toml_value}` is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    config_section! {
        /// A section for the test.
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        struct Sample {
            /// A count.
            count: u64 = 1_000,
            /// A ratio.
            ratio: f64 = 0.25,
            /// A name.
            name: String = "keygate",
            /// A list.
            list: Vec<String> = ["a", "b"],
            /// Unset by default.
            maybe: Option<u32>,
        }
    }

    #[test]
    fn defaults_come_from_the_declared_values() {
        let s = Sample::default();
        assert_eq!(
            s,
            Sample {
                count: 1000,
                ratio: 0.25,
                name: "keygate".into(),
                list: vec!["a".into(), "b".into()],
                maybe: None,
            }
        );
    }

    #[test]
    fn a_file_overrides_only_what_it_sets() {
        use figment::providers::{Format, Toml};
        let s: Sample = figment::Figment::from(Toml::string("count = 7"))
            .extract()
            .unwrap();
        assert_eq!((s.count, s.name.as_str()), (7, "keygate"));
    }

    #[test]
    #[should_panic(expected = "is not valid")]
    fn a_default_the_type_cannot_hold_panics() {
        let _: u32 = super::parse_default("\"many\"");
    }
}
