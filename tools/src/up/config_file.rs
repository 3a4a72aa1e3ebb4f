//! `tiflow up --config FILE`: the same settings as the flags, in TOML,
//! with the flags winning.
//!
//! A key is a flag's long name without its dashes (`stall-timeout` or
//! `stall_timeout`), its value what the flag takes: a string or a number
//! for a setting, `true` for a switch (`false`: not given), an array for
//! a repeatable flag (`forward = ["127.0.0.1:2222=192.0.2.10:2222"]`).
//! The file becomes flags placed before the command line's, so every
//! value goes through the same parsing and checks; a single-valued flag
//! on the command line wins, and a repeatable one given there replaces the
//! file's list. An unknown key, or a value of the wrong shape, is an error
//! that names the file and the key.
//!
//! ```toml
//! tun = "tiflow0"
//! address = ["10.0.1.1/24", "fd00:1::1/64"]   # dual-stack; or one string
//! masquerade = true
//! forward = ["127.0.0.1:2222=192.0.2.10:2222"]
//! stall-timeout = "3s"
//! ```

use std::ffi::OsString;
use std::path::Path;

/// The long flags `tiflow up` takes (`name`, whether it repeats, whether
/// it is a switch), from its clap definition.
pub struct Flag {
    /// The long name, as on the command line (dashes).
    pub name: String,
    /// It may be given many times (`--forward`).
    pub repeats: bool,
    /// It takes no value (`--masquerade`).
    pub switch: bool,
}

/// Expands `--config FILE` in the arguments of `tiflow up` (`args` are
/// those after `up`): the file's settings become flags in front of the
/// rest, except those the command line sets itself. `flags` are the
/// flags `tiflow up` knows.
pub fn expand(args: &[OsString], flags: &[Flag]) -> Result<Vec<OsString>, String> {
    let mut rest = Vec::new();
    let mut file = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if let Some(path) = text.strip_prefix("--config=") {
            file = Some(path.to_owned());
        } else if text == "--config" {
            let path = iter.next().ok_or("--config needs a file: --config FILE")?;
            file = Some(path.to_string_lossy().into_owned());
        } else {
            rest.push(arg.clone());
        }
    }
    let Some(file) = file else {
        return Ok(rest);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read the config file {file}: {e}"))?;
    let mut expanded = from_toml(Path::new(&file), &text, flags, &rest)?;
    expanded.extend(rest);
    Ok(expanded)
}

/// The flags a config file's text stands for, leaving out those that
/// `command_line` sets.
pub fn from_toml(
    file: &Path,
    text: &str,
    flags: &[Flag],
    command_line: &[OsString],
) -> Result<Vec<OsString>, String> {
    let file = file.display();
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {file}: {e}"))?;
    let given = |name: &str| {
        command_line.iter().any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{name}") || a.starts_with(&format!("--{name}="))
        })
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            let known: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "config file {file}: unknown setting {key:?} (known: {})",
                known.join(", ")
            ));
        };
        if given(&name) {
            continue;
        }
        let wrong = |what: &str| format!("config file {file}: {key} must be {what}");
        match value {
            toml::Value::Boolean(on) if flag.switch => {
                if *on {
                    out.push(OsString::from(format!("--{name}")));
                }
            }
            _ if flag.switch => return Err(wrong("true or false")),
            toml::Value::Array(items) if flag.repeats => {
                for item in items {
                    out.push(OsString::from(format!("--{name}")));
                    out.push(OsString::from(
                        scalar(item).ok_or_else(|| wrong("an array of strings or numbers"))?,
                    ));
                }
            }
            other => {
                let value = scalar(other).ok_or_else(|| {
                    wrong(if flag.repeats {
                        "a string, a number, or an array of them"
                    } else {
                        "a string or a number"
                    })
                })?;
                out.push(OsString::from(format!("--{name}")));
                out.push(OsString::from(value));
            }
        }
    }
    Ok(out)
}

/// A string or a number as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<Flag> {
        let flag = |name: &str, repeats, switch| Flag {
            name: name.to_owned(),
            repeats,
            switch,
        };
        vec![
            flag("address", false, false),
            flag("masquerade", false, true),
            flag("forward", true, false),
            flag("stall-timeout", false, false),
            flag("mtu", false, false),
        ]
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn settings_become_flags_and_the_command_line_wins() {
        let text = "address = \"10.0.1.1/24\"\nmasquerade = true\nforward = [\"2222=192.0.2.10:22\", \"8080=192.0.2.10:80\"]\nstall_timeout = \"2s\"\nmtu = 1400\n";
        let flags = from_toml(
            Path::new("f.toml"),
            text,
            &flags(),
            &os(&["--stall-timeout", "5s"]),
        )
        .expect("valid");
        assert_eq!(
            strings(&flags),
            [
                "--address",
                "10.0.1.1/24",
                "--forward",
                "2222=192.0.2.10:22",
                "--forward",
                "8080=192.0.2.10:80",
                "--masquerade",
                "--mtu",
                "1400"
            ]
        );
    }

    #[test]
    fn a_repeatable_flag_on_the_command_line_replaces_the_list() {
        let text = "forward = [\"2222=192.0.2.10:22\"]\n";
        let flags = from_toml(
            Path::new("f.toml"),
            text,
            &flags(),
            &os(&["--forward=1=192.0.2.1:1"]),
        )
        .expect("valid");
        assert!(flags.is_empty());
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let err = |text: &str| {
            from_toml(Path::new("/etc/tiflow.toml"), text, &flags(), &[]).expect_err("rejected")
        };
        let e = err("adress = \"10.0.1.1/24\"");
        assert!(
            e.contains("/etc/tiflow.toml") && e.contains("unknown setting \"adress\""),
            "{e}"
        );
        assert!(e.contains("address, masquerade"), "{e}");
        assert!(err("masquerade = \"yes\"").contains("masquerade must be true or false"));
        assert!(err("address = [1]").contains("address must be a string or a number"));
        assert!(err("address = ").contains("/etc/tiflow.toml"));
    }

    #[test]
    fn without_config_the_arguments_pass_unchanged() {
        let args = os(&["--address", "10.0.1.1/24"]);
        assert_eq!(expand(&args, &flags()).expect("no file"), args);
        let e = expand(&os(&["--config"]), &flags()).expect_err("needs a file");
        assert!(e.contains("--config FILE"));
        let e = expand(&os(&["--config", "/nonexistent/tiflow.toml"]), &flags())
            .expect_err("missing file");
        assert!(
            e.contains("cannot read the config file /nonexistent/tiflow.toml"),
            "{e}"
        );
    }
}
