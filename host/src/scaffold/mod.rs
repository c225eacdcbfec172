//! `wasmgate new NAME --lang LANG [--dir PARENT]`: a new app in a directory
//! of its own, `PARENT/NAME`, that builds outside this repository and runs
//! with `wasmgate dev`.
//!
//! An app is: its source in one of the guest languages (a small room
//! thermostat against the `wasmgate:device/app` world, from
//! `host/templates/<lang>/`), that language's SDK layer and the WIT package,
//! both copied from what this binary was built with ([`embedded`]), its
//! device model, a `gateway.toml` for `wasmgate dev` (no `[cloud]`: `dev`
//! adds the embedded broker), and a README with the one command that builds
//! it and the one that runs it. The build is the repository's own for that
//! language (`guests/build`: the same tools and flags), with every path
//! inside the app: Rust's is one cargo command, the others' a `build.sh`
//! that finds the tools where `guests/install-tools` puts them
//! (`$WASMGATE_GUEST_TOOLS`, by default `~/.cache/wasmgate/guest-tools`),
//! else on `PATH`.
//!
//! Everything is written into a staging directory beside the target and
//! renamed into place at the end, so a failed `new` leaves nothing behind
//! and a directory that is not empty is never written into.

pub mod embedded;

use anyhow::{Context as _, anyhow, bail};
use std::path::{Path, PathBuf};

/// The languages an app can be written in: the guest languages of
/// `guests/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
    C,
    Go,
    Zig,
}

impl Language {
    pub const ALL: [Language; 6] = [
        Language::Rust,
        Language::Js,
        Language::Python,
        Language::C,
        Language::Go,
        Language::Zig,
    ];

    /// How people name it.
    pub fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
            Language::C => "C",
            Language::Go => "Go",
            Language::Zig => "Zig",
        }
    }

    /// The one command, run in the app's directory, that builds the app's
    /// component (what its README documents).
    pub fn build_command(self) -> &'static str {
        match self {
            // guests/build's flags; --target-dir keeps the component where
            // gateway.toml looks for it, whatever CARGO_TARGET_DIR says.
            Language::Rust => "cargo build --release --target wasm32-wasip2 --target-dir target",
            _ => "./build.sh",
        }
    }
}

/// The command, run in the app's directory, that runs it (what its README
/// documents).
pub const RUN_COMMAND: &str = "wasmgate dev --config gateway.toml";

/// One file of a new app.
#[derive(Debug, Clone)]
pub struct AppFile {
    /// Relative to the app's directory, `/`-separated.
    pub path: String,
    pub text: String,
    pub executable: bool,
}

impl AppFile {
    fn new(path: impl Into<String>, text: impl Into<String>) -> AppFile {
        AppFile {
            path: path.into(),
            text: text.into(),
            executable: false,
        }
    }
}

/// Refuse a name gateway.toml would refuse: an app's name is its device's
/// id by default, a segment of its MQTT topics and a directory name.
pub fn check_app_name(name: &str) -> anyhow::Result<()> {
    crate::model::check_name(name).map_err(|message| {
        anyhow!("{message}: an app's name is its device's id and part of its MQTT topics, and gateway.toml refuses it")
    })
}

/// Make app `name` in `language` as `parent/name`: refused if the name is
/// not an app name, or if `parent/name` exists and is not an empty
/// directory. `parent` is made if it is missing. Returns the app's
/// directory.
pub fn create(name: &str, language: Language, parent: &Path) -> anyhow::Result<PathBuf> {
    check_app_name(name)?;
    let dir = parent.join(name);
    refuse_occupied(&dir)?;
    let files = app_files(name, language);
    std::fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
    // Beside the target, so on its file system and the rename below is
    // atomic; a dot name, hidden from listings meanwhile.
    let staging = parent.join(format!(".{name}.wasmgate-new-{}", std::process::id()));
    std::fs::create_dir(&staging)
        .with_context(|| format!("making the staging directory {}", staging.display()))?;
    let written = write_files(&staging, &files).and_then(|()| {
        // rename(2) replaces an empty directory and refuses any other, so a
        // directory filled since the check above is not touched either.
        std::fs::rename(&staging, &dir).map_err(|error| match error.kind() {
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
                not_empty(&dir)
            }
            _ => anyhow::Error::new(error).context(format!(
                "moving {} to {}",
                staging.display(),
                dir.display()
            )),
        })
    });
    if let Err(error) = written {
        // Best effort: the error that stopped us is the one to report.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    Ok(dir)
}

fn not_empty(dir: &Path) -> anyhow::Error {
    anyhow!(
        "{} exists and is not empty: wasmgate new writes an app only into a new or empty directory (give another NAME or --dir)",
        dir.display()
    )
}

/// Refuse `dir` unless it is missing or an empty directory (not a symlink to
/// one: the rename would replace the link, not fill its target).
fn refuse_occupied(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("looking at {}", dir.display())))
        }
        Ok(meta) if !meta.is_dir() => bail!(
            "{} exists and is not a directory: wasmgate new makes the app a directory of its own",
            dir.display()
        ),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(not_empty(dir)),
            }
        }
    }
}

fn write_files(root: &Path, files: &[AppFile]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for file in files {
        let path = root.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("making {}", parent.display()))?;
        }
        std::fs::write(&path, &file.text).with_context(|| format!("writing {}", path.display()))?;
        if file.executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
    }
    Ok(())
}

/// The names an app's files use, all made from its name.
struct Names {
    name: String,
    /// For Cargo's package and Go's module: ASCII letters, digits and `_`,
    /// starting with a letter (an app name may be `2nd.floor-room`).
    ident: String,
    /// For package.json, which wants lower case.
    npm: String,
    /// The development gateway's id: never the app's device id.
    gateway: String,
    /// The component gateway.toml runs, relative to the app's directory.
    component: String,
}

impl Names {
    fn new(name: &str, language: Language) -> Names {
        let plain: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let ident = if plain.starts_with(|c: char| c.is_ascii_alphabetic()) {
            plain
        } else {
            format!("app_{plain}")
        };
        let gateway = if name == "dev-gateway" {
            "dev-gateway-1"
        } else {
            "dev-gateway"
        };
        let component = match language {
            Language::Rust => format!("target/wasm32-wasip2/release/{ident}.wasm"),
            _ => format!("out/{name}.wasm"),
        };
        Names {
            name: name.to_string(),
            npm: ident.to_ascii_lowercase().replace('_', "-"),
            ident,
            gateway: gateway.to_string(),
            component,
        }
    }

    /// `{{key}}` of a template, for each key.
    fn vars(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("name", &self.name),
            ("crate", &self.ident),
            ("go_module", &self.ident),
            ("npm", &self.npm),
            ("gateway", &self.gateway),
            ("component", &self.component),
        ]
    }
}

/// `template` with each `{{key}}` of `vars` replaced by its value.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// A language's templates (`host/templates/<lang>/`): the files of the app
/// that are its own, and the parts of its README.
struct Templates {
    /// `(path in the app, template, executable)`.
    sources: &'static [(&'static str, &'static str, bool)],
    /// Rows of the README's table of files.
    files: &'static str,
    /// The README's "Tools" section.
    tools: &'static str,
    /// What the README says after the build command.
    build_notes: &'static str,
}

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../templates/", $path))
    };
}

fn templates(language: Language) -> Templates {
    match language {
        Language::Rust => Templates {
            sources: &[
                ("Cargo.toml", template!("rust/Cargo.toml"), false),
                ("Cargo.lock", template!("rust/Cargo.lock"), false),
                ("src/lib.rs", template!("rust/src/lib.rs"), false),
                (
                    "wasmgate-guest/Cargo.toml",
                    template!("rust/wasmgate-guest/Cargo.toml"),
                    false,
                ),
            ],
            files: template!("rust/files.md"),
            tools: template!("rust/tools.md"),
            build_notes: template!("rust/build.md"),
        },
        Language::Js => Templates {
            sources: &[
                ("package.json", template!("js/package.json"), false),
                ("src/app.js", template!("js/src/app.js"), false),
                ("build.sh", template!("js/build.sh"), true),
            ],
            files: template!("js/files.md"),
            tools: template!("js/tools.md"),
            build_notes: template!("js/build.md"),
        },
        Language::Python => Templates {
            sources: &[
                ("src/app.py", template!("python/src/app.py"), false),
                ("build.sh", template!("python/build.sh"), true),
            ],
            files: template!("python/files.md"),
            tools: template!("python/tools.md"),
            build_notes: template!("python/build.md"),
        },
        Language::C => Templates {
            sources: &[
                ("src/app.c", template!("c/src/app.c"), false),
                ("build.sh", template!("c/build.sh"), true),
            ],
            files: template!("c/files.md"),
            tools: template!("c/tools.md"),
            build_notes: template!("c/build.md"),
        },
        Language::Go => Templates {
            sources: &[
                ("go.mod", template!("go/go.mod"), false),
                ("main.go", template!("go/main.go"), false),
                ("build.sh", template!("go/build.sh"), true),
            ],
            files: template!("go/files.md"),
            tools: template!("go/tools.md"),
            build_notes: template!("go/build.md"),
        },
        Language::Zig => Templates {
            sources: &[
                ("src/app.zig", template!("zig/src/app.zig"), false),
                ("build.sh", template!("zig/build.sh"), true),
            ],
            files: template!("zig/files.md"),
            tools: template!("zig/tools.md"),
            build_notes: template!("zig/build.md"),
        },
    }
}

/// The language's SDK layer, copied from the repository's guests, with what
/// names the repository's layout replaced by the app's.
fn sdk_files(language: Language, names: &Names) -> Vec<AppFile> {
    use embedded::*;
    let copy = |dir: &str, files: &[(&str, &str)], edit: &dyn Fn(&str) -> String| {
        files
            .iter()
            .map(|(path, text)| AppFile::new(format!("{dir}{path}"), edit(text)))
            .collect::<Vec<_>>()
    };
    let unchanged = |text: &str| text.to_string();
    match language {
        Language::Rust => copy("wasmgate-guest/src/", RUST_SDK, &|text| {
            let (repository, app) = RUST_SDK_WIT_PATH;
            text.replace(repository, app)
        }),
        Language::Js => {
            let mut files = copy("src/", JS_SDK, &unchanged);
            let name = |npm: &str| format!("\"name\": \"{npm}\"");
            files.push(AppFile::new(
                "package-lock.json",
                JS_LOCK.replace(&name(JS_LOCK_NAME), &name(&names.npm)),
            ));
            files
        }
        Language::Python => copy("src/", PYTHON_SDK, &unchanged),
        Language::C => copy("src/", C_SDK, &unchanged),
        Language::Go => copy("", GO_SDK, &|text| text.replace(GO_MODULE, &names.ident)),
        Language::Zig => copy("src/", ZIG_SDK, &unchanged),
    }
}

/// Every file of app `name` in `language`, by its path in the app's
/// directory. `name` must be an app name ([`check_app_name`]).
pub fn app_files(name: &str, language: Language) -> Vec<AppFile> {
    let names = Names::new(name, language);
    let vars = names.vars();
    let templates = templates(language);
    let mut files: Vec<AppFile> = templates
        .sources
        .iter()
        .map(|(path, template, executable)| AppFile {
            path: path.to_string(),
            text: render(template, &vars),
            executable: *executable,
        })
        .collect();
    files.extend(sdk_files(language, &names));

    let files_table = render(templates.files, &vars);
    let tools = render(templates.tools, &vars);
    let build_notes = render(templates.build_notes, &vars);
    let mut readme_vars = vars.clone();
    readme_vars.extend([
        ("language", language.title()),
        ("files", files_table.as_str()),
        ("tools", tools.trim_end()),
        ("build", language.build_command()),
        ("build_notes", build_notes.trim_end()),
    ]);
    files.push(AppFile::new(
        "README.md",
        render(template!("common/README.md"), &readme_vars),
    ));
    files.push(AppFile::new(
        "gateway.toml",
        render(template!("common/gateway.toml"), &vars),
    ));
    files.push(AppFile::new(
        format!("{name}.model.json"),
        render(template!("common/model.json"), &vars),
    ));
    let ignored = match language {
        Language::Rust => "target/\n",
        Language::Js => "node_modules/\nout/\n",
        _ => "out/\n",
    };
    files.push(AppFile::new(
        ".gitignore",
        format!("# What the build and the development gateway write.\n{ignored}data/\n"),
    ));
    files.extend(
        embedded::WIT
            .iter()
            .map(|(path, text)| AppFile::new(format!("wit/{path}"), *text)),
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(files: &'a [AppFile], path: &str) -> &'a AppFile {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn every_template_is_filled_in() {
        for language in Language::ALL {
            let files = app_files("room-1", language);
            // The SDKs and the WIT are copies, not templates.
            let rendered = templates(language)
                .sources
                .iter()
                .map(|(path, _, _)| *path)
                .chain(["README.md", "gateway.toml", "room-1.model.json"]);
            for path in rendered {
                let text = &file(&files, path).text;
                assert!(
                    !text.contains("{{"),
                    "{language:?}: {path} keeps a placeholder:\n{text}"
                );
            }
        }
    }

    #[test]
    fn the_gateway_toml_and_the_model_are_what_the_gateway_takes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for language in Language::ALL {
            for name in ["room", "2nd.floor-room", "dev-gateway"] {
                let files = app_files(name, language);
                let model = file(&files, &format!("{name}.model.json"));
                crate::model::DeviceModel::parse(&model.text)
                    .unwrap_or_else(|e| panic!("{language:?} {name}: model: {e}"));
                let gateway = file(&files, "gateway.toml");
                let path = dir.path().join("gateway.toml");
                let config = crate::config::Config::parse(&path, &gateway.text)
                    .unwrap_or_else(|e| panic!("{language:?} {name}: gateway.toml: {e}"));
                assert!(
                    config.cloud.is_none(),
                    "wasmgate dev adds the embedded broker"
                );
                let app = &config.apps[0];
                assert_eq!(app.name, name);
                // The component is where the documented build writes it.
                let component = app.component.strip_prefix(dir.path()).expect("in the app");
                let build = language.build_command();
                match language {
                    Language::Rust => assert!(
                        component.starts_with("target/wasm32-wasip2/release")
                            && build.contains("--target-dir target")
                    ),
                    _ => {
                        let script = &file(&files, "build.sh").text;
                        let out = format!("-o out/{name}.wasm");
                        let emitted = format!("{name}.wasm");
                        assert!(component.starts_with("out"));
                        assert!(
                            script.contains(&out) || script.contains(&emitted),
                            "{language:?}: build.sh does not write {}",
                            component.display()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_readme_documents_one_build_command_and_one_run_command() {
        for language in Language::ALL {
            let files = app_files("room", language);
            let readme = &file(&files, "README.md").text;
            let block = |heading: &str| -> Vec<String> {
                let section = readme
                    .split(&format!("\n## {heading}\n"))
                    .nth(1)
                    .unwrap_or_else(|| panic!("no {heading} section"));
                let code = section.split("```sh\n").nth(1).expect("a sh block");
                code.split("```")
                    .next()
                    .expect("closed")
                    .lines()
                    .map(str::to_string)
                    .collect()
            };
            assert_eq!(block("Build"), [language.build_command()], "{language:?}");
            assert_eq!(block("Run"), [RUN_COMMAND], "{language:?}");
            // The build refers to nothing of this repository's layout.
            let build = match language {
                Language::Rust => language.build_command(),
                _ => &file(&files, "build.sh").text,
            };
            for repository_path in ["../../", "guests/build", "guests/rust", "$here"] {
                assert!(
                    !build.contains(repository_path),
                    "{language:?}: the build mentions {repository_path}"
                );
            }
        }
    }

    #[test]
    fn names_cargo_npm_and_go_refuse_become_identifiers() {
        let names = Names::new("2nd.floor-Room", Language::Rust);
        assert_eq!(names.ident, "app_2nd_floor_Room");
        assert_eq!(names.npm, "app-2nd-floor-room");
        assert_eq!(
            names.component,
            "target/wasm32-wasip2/release/app_2nd_floor_Room.wasm"
        );
        assert_eq!(Names::new("room", Language::Zig).component, "out/room.wasm");
    }

    #[test]
    fn a_bad_name_is_refused_before_anything_is_written() {
        let parent = tempfile::tempdir().expect("tempdir");
        for name in ["", "my app", "../up", "a/b", ".", "..", &"x".repeat(65)] {
            let error = create(name, Language::Rust, parent.path()).expect_err(name);
            assert!(error.to_string().contains("is not a valid name"), "{error}");
        }
        assert_eq!(std::fs::read_dir(parent.path()).expect("read").count(), 0);
    }

    #[test]
    fn an_empty_directory_is_filled_and_a_full_one_refused() {
        let parent = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(parent.path().join("room")).expect("mkdir");
        let app = create("room", Language::C, parent.path()).expect("an empty directory is taken");
        assert!(app.join("build.sh").exists());
        let error = create("room", Language::C, parent.path()).expect_err("not empty");
        assert!(error.to_string().contains("is not empty"), "{error}");
        // Nothing but the app: no staging directory left behind.
        assert_eq!(std::fs::read_dir(parent.path()).expect("read").count(), 1);
    }
}
