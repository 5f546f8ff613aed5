//! The commands `dht-node cluster` takes on stdin or from a scenario file, one a line.
//!
//! ```text
//! workers 60          # scale the workers; the bootstrap tier follows the policy
//! kill-bootstrap 1    # stop bootstrap node 1 (as a crash would)
//! start-bootstrap 1   # start it again on its address
//! put greeting hello  # store a str value through a worker
//! get greeting        # read it back through another worker
//! wait 2.5            # let time pass (scale-down stabilization keeps running)
//! status              # print the table
//! quit                # stop every node and exit
//! ```
//!
//! Blank lines and `#` comments are ignored. Errors name the line and the offending word.

use std::fmt;
use std::time::Duration;

/// The longest `wait` accepted: an hour.
const MAX_WAIT_SECS: f64 = 3600.0;

/// The most workers one in-process cluster may be asked for.
pub const MAX_WORKERS: u32 = 10_000;

/// One cluster command.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterCommand {
    /// Scale to this many workers.
    Workers(u32),
    /// Stop the bootstrap node with this index.
    KillBootstrap(usize),
    /// Start the bootstrap node with this index again.
    StartBootstrap(usize),
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Wait(Duration),
    Status,
    Quit,
}

impl fmt::Display for ClusterCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterCommand::Workers(n) => write!(f, "workers {n}"),
            ClusterCommand::KillBootstrap(i) => write!(f, "kill-bootstrap {i}"),
            ClusterCommand::StartBootstrap(i) => write!(f, "start-bootstrap {i}"),
            ClusterCommand::Put { key, value } => write!(f, "put {key} {value}"),
            ClusterCommand::Get { key } => write!(f, "get {key}"),
            ClusterCommand::Wait(duration) => write!(f, "wait {}", duration.as_secs_f64()),
            ClusterCommand::Status => f.write_str("status"),
            ClusterCommand::Quit => f.write_str("quit"),
        }
    }
}

/// A line that is not a command; names the line and the word.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub problem: String,
}

/// A command with the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioStep {
    pub line: usize,
    pub command: ClusterCommand,
    /// The whole-line comments right before the command, without `#`: a demo's narration.
    pub notes: Vec<String>,
}

/// Parses line `line` (1-based); `Ok(None)` for a blank or comment line.
pub fn parse_line(line: usize, text: &str) -> Result<Option<ClusterCommand>, ParseError> {
    let text = text.split_once('#').map_or(text, |(before, _)| before);
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Ok(None);
    };
    let fail = |problem: String| ParseError { line, problem };
    let expect_args = |count: usize, usage: &str| {
        if args.len() == count {
            Ok(())
        } else if args.len() < count {
            Err(fail(format!("{verb:?} needs {usage}")))
        } else {
            Err(fail(format!(
                "unexpected word {:?} after {verb:?} (usage: {verb} {usage})",
                args[count]
            )))
        }
    };
    let command = match verb {
        "workers" => {
            expect_args(1, "COUNT")?;
            let count: u32 = args[0]
                .parse()
                .map_err(|_| fail(format!("worker count {:?} is not a whole number", args[0])))?;
            if count > MAX_WORKERS {
                return Err(fail(format!("worker count {count} is above the limit {MAX_WORKERS}")));
            }
            ClusterCommand::Workers(count)
        }
        "kill-bootstrap" | "start-bootstrap" => {
            expect_args(1, "INDEX")?;
            let index: usize = args[0].parse().map_err(|_| {
                fail(format!("bootstrap index {:?} is not a whole number", args[0]))
            })?;
            if verb == "kill-bootstrap" {
                ClusterCommand::KillBootstrap(index)
            } else {
                ClusterCommand::StartBootstrap(index)
            }
        }
        "put" => {
            expect_args(2, "KEY VALUE")?;
            ClusterCommand::Put { key: args[0].to_owned(), value: args[1].to_owned() }
        }
        "get" => {
            expect_args(1, "KEY")?;
            ClusterCommand::Get { key: args[0].to_owned() }
        }
        "wait" => {
            expect_args(1, "SECS")?;
            let seconds: f64 = args[0]
                .parse()
                .map_err(|_| fail(format!("wait {:?} is not a number of seconds", args[0])))?;
            if !(0.0..=MAX_WAIT_SECS).contains(&seconds) {
                return Err(fail(format!(
                    "wait {:?} must be from 0 to {MAX_WAIT_SECS} seconds",
                    args[0]
                )));
            }
            ClusterCommand::Wait(Duration::from_secs_f64(seconds))
        }
        "status" => {
            expect_args(0, "")?;
            ClusterCommand::Status
        }
        "quit" | "exit" => {
            expect_args(0, "")?;
            ClusterCommand::Quit
        }
        other => {
            return Err(fail(format!(
                "unknown command {other:?} (expected workers, kill-bootstrap, start-bootstrap, put, get, wait, status or quit)"
            )))
        }
    };
    Ok(Some(command))
}

/// Parses a whole scenario; the first bad line fails it.
pub fn parse_scenario(text: &str) -> Result<Vec<ScenarioStep>, ParseError> {
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(note) = line.trim_start().strip_prefix('#') {
            notes.push(note.trim().to_owned());
        } else if let Some(command) = parse_line(index + 1, line)? {
            steps.push(ScenarioStep {
                line: index + 1,
                command,
                notes: std::mem::take(&mut notes),
            });
        } else {
            // A blank line ends a note: it was about what came before.
            notes.clear();
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ClusterCommand>, ParseError> {
        parse_line(7, text)
    }

    #[test]
    fn good_lines() {
        let cases = [
            ("workers 60", ClusterCommand::Workers(60)),
            ("  workers   0  ", ClusterCommand::Workers(0)),
            ("kill-bootstrap 1", ClusterCommand::KillBootstrap(1)),
            ("start-bootstrap 0 # back again", ClusterCommand::StartBootstrap(0)),
            (
                "put greeting héllo",
                ClusterCommand::Put { key: "greeting".into(), value: "héllo".into() },
            ),
            ("get greeting", ClusterCommand::Get { key: "greeting".into() }),
            ("wait 2.5", ClusterCommand::Wait(Duration::from_millis(2500))),
            ("wait 0", ClusterCommand::Wait(Duration::ZERO)),
            ("status", ClusterCommand::Status),
            ("quit", ClusterCommand::Quit),
            ("exit", ClusterCommand::Quit),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(Some(expected)), "{text:?}");
        }
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   # only a comment"), Ok(None));
    }

    #[test]
    fn bad_lines_name_the_line_and_the_word() {
        let cases = [
            ("wrokers 10", "unknown command \"wrokers\""),
            ("workers ten", "worker count \"ten\" is not a whole number"),
            ("workers -1", "worker count \"-1\" is not a whole number"),
            ("workers 10001", "worker count 10001 is above the limit"),
            ("workers", "\"workers\" needs COUNT"),
            ("workers 10 20", "unexpected word \"20\" after \"workers\""),
            ("kill-bootstrap x", "bootstrap index \"x\" is not a whole number"),
            ("put onlykey", "\"put\" needs KEY VALUE"),
            ("get a b", "unexpected word \"b\" after \"get\""),
            ("wait soon", "wait \"soon\" is not a number of seconds"),
            ("wait -1", "wait \"-1\" must be from 0"),
            ("wait NaN", "wait \"NaN\" must be from 0"),
            ("status now", "unexpected word \"now\" after \"status\""),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.line, 7, "{text:?}");
            let message = error.to_string();
            assert!(message.starts_with("line 7: "), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn a_scenario_keeps_line_numbers_and_stops_at_the_first_bad_line() {
        let steps =
            parse_scenario("# a note\n#  about growing\nworkers 10 # inline\n# lost\n\nstatus\n")
                .unwrap();
        assert_eq!(
            steps,
            vec![
                ScenarioStep {
                    line: 3,
                    command: ClusterCommand::Workers(10),
                    notes: vec!["a note".into(), "about growing".into()],
                },
                ScenarioStep { line: 6, command: ClusterCommand::Status, notes: vec![] },
            ]
        );
        let error = parse_scenario("workers 10\nstatus\nfly away\n").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.to_string().contains("\"fly\""), "{error}");
    }

    #[test]
    fn the_demo_scenario_parses_and_goes_through_every_tier() {
        let steps = parse_scenario(include_str!("../../../scenarios/demo.txt")).unwrap();
        let commands: Vec<&ClusterCommand> = steps.iter().map(|step| &step.command).collect();
        for expected in [
            ClusterCommand::Workers(60),
            ClusterCommand::Workers(300),
            ClusterCommand::KillBootstrap(1),
            ClusterCommand::StartBootstrap(1),
        ] {
            assert!(commands.contains(&&expected), "the demo lacks {expected}");
        }
        assert!(commands.iter().any(|c| matches!(c, ClusterCommand::Get { .. })));
        assert!(steps[0].notes.iter().any(|note| note.contains("stored")), "narrated");
    }

    #[test]
    fn commands_print_as_they_parse() {
        for text in ["workers 60", "kill-bootstrap 2", "put k v", "get k", "wait 1.5", "status"] {
            let command = parse(text).unwrap().unwrap();
            assert_eq!(command.to_string(), text);
        }
    }
}
