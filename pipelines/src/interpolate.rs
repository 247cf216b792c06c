//! `${VAR}` and `${VAR:-default}` in pipeline files, with positions mapped back.

use std::collections::HashMap;

/// Where substitutions changed a line: (new start column, new end, original start, original end),
/// columns counted in characters from 0.
type LineEdits = Vec<(usize, usize, usize, usize)>;

/// The interpolated text and what it takes to map its positions back to the original.
#[derive(Debug)]
pub struct Interpolated {
    pub text: String,
    edits: HashMap<usize, LineEdits>,
    /// Substituted values that are secrets (see [`crate::secrets`]).
    pub secrets: Vec<String>,
}

impl Interpolated {
    /// Maps a 1-based (line, column) of the interpolated text to the original text.
    pub fn original_column(&self, line: u64, column: u64) -> u64 {
        let Some(edits) = self.edits.get(&(line as usize)) else {
            return column;
        };
        let col = column.saturating_sub(1) as usize;
        let mut shift: isize = 0;
        for &(ns, ne, os, oe) in edits {
            if col < ns {
                break;
            }
            if col < ne {
                return os as u64 + 1;
            }
            shift = oe as isize - ne as isize;
        }
        (col as isize + shift).max(0) as u64 + 1
    }
}

/// Why a `${...}` cannot be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationProblem {
    #[error("unclosed `${{`: write ${{VAR}} or ${{VAR:-default}}")]
    Unclosed,
    #[error("`{0}` is not a variable name: use letters, digits and _")]
    BadName(String),
    #[error("environment variable {0} is not set (write ${{{0}:-default}} to give a default)")]
    Unset(String),
}

/// A `${...}` that cannot be substituted, and where it is (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {problem}")]
pub struct InterpolationError {
    pub line: u64,
    pub column: u64,
    pub problem: InterpolationProblem,
}

/// Replaces `${VAR}` / `${VAR:-default}` outside comments. `$${` stays a literal `${`.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let at = |ln: usize, i: usize, problem| InterpolationError {
        line: ln as u64 + 1,
        column: i as u64 + 1,
        problem,
    };
    let mut out = String::with_capacity(text.len());
    let mut edits = HashMap::new();
    let mut secrets = Vec::new();
    for (ln, line) in text.split_inclusive('\n').enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut line_edits = Vec::new();
        let mut new_col = 0usize;
        let (mut single, mut double) = (false, false);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '#' && !single && !double && (i == 0 || chars[i - 1].is_whitespace()) {
                out.extend(&chars[i..]);
                break;
            }
            match c {
                '\'' if !double => single = !single,
                '"' if !single && (i == 0 || chars[i - 1] != '\\') => double = !double,
                _ => {}
            }
            if c == '$' && chars.get(i + 1) == Some(&'$') && chars.get(i + 2) == Some(&'{') {
                out.push_str("${");
                line_edits.push((new_col, new_col + 2, i, i + 3));
                new_col += 2;
                i += 3;
                continue;
            }
            if c == '$' && chars.get(i + 1) == Some(&'{') {
                let Some(close) = chars[i + 2..].iter().position(|&c| c == '}') else {
                    return Err(at(ln, i, InterpolationProblem::Unclosed));
                };
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner.as_str(), None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(at(ln, i, InterpolationProblem::BadName(name.to_string())));
                }
                let value = match (
                    env(name).filter(|v| !v.is_empty() || default.is_none()),
                    default,
                ) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_string(),
                    (None, None) => {
                        return Err(at(ln, i, InterpolationProblem::Unset(name.to_string())));
                    }
                };
                let before: String = chars[..i].iter().collect();
                if crate::secrets::is_secret_name(name)
                    || crate::secrets::setting_before(&before, before.len())
                        .is_some_and(crate::secrets::is_secret_name)
                {
                    secrets.push(value.clone());
                }
                let len = value.chars().count();
                let orig_end = i + 3 + close;
                line_edits.push((new_col, new_col + len, i, orig_end));
                out.push_str(&value);
                new_col += len;
                i = orig_end;
                continue;
            }
            out.push(c);
            new_col += 1;
            i += 1;
        }
        if !line_edits.is_empty() {
            edits.insert(ln + 1, line_edits);
        }
    }
    Ok(Interpolated {
        text: out,
        edits,
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("10.0.0.1:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_maps_columns_back() {
        let t = interpolate(
            "a: ${BROKERS} x ${NOPE:-d}  # ${COMMENT}\nb: '${EMPTY:-e}' $${lit}\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            t.text,
            "a: 10.0.0.1:9092 x d  # ${COMMENT}\nb: 'e' ${lit}\n"
        );
        // `x` is at column 18 in the new text and 15 in the original
        assert_eq!(t.original_column(1, 18), 15);
        // inside the substituted value: the start of `${BROKERS}`
        assert_eq!(t.original_column(1, 6), 4);
        assert_eq!(t.original_column(2, 1), 1);
    }

    #[test]
    fn unset_variables_are_errors_with_positions() {
        let e = interpolate("name: x\nbrokers: ${MISSING}\n", &env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 10));
        assert_eq!(e.problem, InterpolationProblem::Unset("MISSING".into()));
        assert_eq!(
            e.problem.to_string(),
            "environment variable MISSING is not set (write ${MISSING:-default} to give a default)"
        );
        let e = interpolate("a: ${bad name}", &env).unwrap_err();
        assert_eq!(
            e.problem.to_string(),
            "`bad name` is not a variable name: use letters, digits and _"
        );
        let e = interpolate("a: ${OPEN", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "1:4: unclosed `${`: write ${VAR} or ${VAR:-default}"
        );
    }
}
