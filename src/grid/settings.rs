//! `--set KEY=VALUE` on the command line: any key a grid may set, checked and read the way
//! a grid file's keys are (the same schema, the same TOML value syntax, the same
//! deserialisation), so the command line reaches every setting of a config that grids do.

use super::*;

/// `config` (the table grids write under `section`, e.g. `prune`) with each `KEY=VALUE`
/// of `settings` applied in order. KEY is a grid key with or without the section
/// (`laco_span` or `prune.laco_span`, `calib.nrows`); VALUE is a TOML value (`4`, `0.5`,
/// `"fold"` or plain `fold`, `[1, 2]`). Every problem names the setting. Without settings
/// the config is returned as it is.
pub fn apply_settings<T>(config: &T, section: &str, settings: &[String]) -> Result<T>
where
    T: Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
{
    if settings.is_empty() {
        return Ok(config.clone());
    }
    let schema = schema();
    let bad = |s: &str, msg: String| Error::Invalid(format!("--set {s}: {msg}"));
    let mut value = serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?;
    // JSON has no NaN or infinity: such a flag value would silently become null.
    if serde_json::from_value::<T>(value.clone()).ok().as_ref() != Some(config) {
        return Err(Error::Invalid(format!(
            "--set: a `{section}` flag has a value that cannot be combined with --set (not a \
             finite number?)"
        )));
    }
    for s in settings {
        let Some((key, text)) = s.split_once('=') else {
            return Err(bad(s, "expected KEY=VALUE".into()));
        };
        let key = key.trim();
        let key = key.strip_prefix(&format!("{section}.")).unwrap_or(key);
        let full = format!("{section}.{key}");
        check_key(&schema, &full).map_err(|m| bad(s, m))?;
        let v = toml_value(text.trim()).map_err(|m| bad(s, m))?;
        check_value(&full, &v).map_err(|m| bad(s, m))?;
        let Value::Object(root) = &mut value else {
            return Err(bad(s, format!("`{section}` is not a table")));
        };
        set_path(root, key, v);
    }
    serde_json::from_value(value).map_err(|e| Error::Invalid(format!("--set: {e}")))
}

/// A TOML value as JSON; a bare word that is not TOML (`fold`) is the string it spells.
fn toml_value(text: &str) -> std::result::Result<Value, String> {
    let parsed = format!("v = {text}").parse::<toml::Table>();
    let v = match parsed {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(text.into())),
        Err(_) if !text.is_empty() && !text.contains(['"', '[', '{', '=']) => {
            toml::Value::String(text.into())
        }
        Err(e) => return Err(format!("not a TOML value: {}", e.message())),
    };
    serde_json::to_value(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &[&str]) -> Result<PruneConfig> {
        let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
        apply_settings(&PruneConfig::default(), "prune", &s)
    }

    #[test]
    fn settings_reach_every_prune_key_with_grid_syntax() {
        let c = set(&[
            "laco_span=4",
            "prune.protect_first=1",
            "calib.nrows=64",
            "norm=fold",
            "merge=\"linear\"",
            "sparsity=0.25",
        ])
        .unwrap();
        assert_eq!((c.laco_span, c.protect_first, c.calib.nrows), (4, 1, 64));
        assert_eq!(c.sparsity, Some(0.25));
        assert_eq!(
            serde_json::to_value(c.norm).unwrap(),
            serde_json::json!("fold")
        );
        assert_eq!(
            serde_json::to_value(c.merge).unwrap(),
            serde_json::json!("linear")
        );
        // Later settings win; the rest keep their defaults.
        let c = set(&["comep_grid=8", "comep_grid=12"]).unwrap();
        assert_eq!((c.comep_grid, c.laco_span), (12, 2));
    }

    #[test]
    fn bad_settings_name_the_setting_and_the_problem() {
        let e = set(&["laco_spam=4"]).unwrap_err().to_string();
        assert!(
            e.contains("--set laco_spam=4") && e.contains("did you mean `prune.laco_span`"),
            "{e}"
        );
        let e = set(&["laco_span=four"]).unwrap_err().to_string();
        assert!(e.contains("--set laco_span=four"), "{e}");
        let e = set(&["merge=glue"]).unwrap_err().to_string();
        assert!(e.contains("--set merge=glue") && e.contains("glue"), "{e}");
        let e = set(&["laco_span"]).unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        let e = set(&["calib.nrows=[1,"]).unwrap_err().to_string();
        assert!(e.contains("not a TOML value"), "{e}");
    }
}
