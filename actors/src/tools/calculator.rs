//! `calculator`: arithmetic the model should not do in its head, by the
//! `exmex` expression evaluator (numbers, `+ - * / ^`, parentheses, and
//! functions such as `sqrt`, `ln`, `sin`); never an `eval` of code.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext, string_argument};

/// Longest expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 1024;

/// Deepest nesting of parentheses (the parser recurses on them).
pub const MAX_DEPTH: usize = 64;

/// The calculator tool.
pub struct Calculator;

/// Evaluates `expression`, or says in words why it cannot.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "The expression is longer than {MAX_EXPRESSION_BYTES} bytes."
        ));
    }
    let mut depth = 0usize;
    for c in expression.chars() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_DEPTH {
            return Err(format!(
                "The expression nests parentheses deeper than {MAX_DEPTH}."
            ));
        }
    }
    let value = exmex::eval_str::<f64>(expression)
        .map_err(|e| format!("The expression could not be evaluated: {e}"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("The result is not a finite number ({value})."))
    }
}

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn description(&self) -> &str {
        "Evaluates an arithmetic expression exactly as written and returns the number. \
         Supports + - * / ^, parentheses, and functions such as sqrt, ln, log10, exp, \
         sin, cos, tan, abs, and the constants PI and E."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "For example: (2 + 3) * 4 ^ 2 / sqrt(16)"}
            },
            "required": ["expression"],
            "additionalProperties": false,
        })
    }

    fn call(&self, _: ToolContext, arguments: Value) -> BoxFuture<'static, Result<String, String>> {
        let result = string_argument(&arguments, "expression")
            .and_then(evaluate)
            .map(format_number);
        Box::pin(async move { result })
    }
}

/// A result as people write it: integers without a fraction.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_evaluated() {
        assert_eq!(evaluate("(2 + 3) * 4").unwrap(), 20.0);
        assert_eq!(evaluate("2^10").unwrap(), 1024.0);
        assert!((evaluate("sqrt(2)").unwrap() - std::f64::consts::SQRT_2).abs() < 1e-12);
        assert_eq!(format_number(evaluate("7 / 2").unwrap()), "3.5");
        assert_eq!(format_number(evaluate("6 * 7").unwrap()), "42");
    }

    #[test]
    fn bad_expressions_are_explained_not_run() {
        for bad in ["", "2 +", "x + 1", "std::process::exit(1)", "1/0"] {
            assert!(evaluate(bad).is_err(), "{bad}");
        }
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(evaluate(&deep).unwrap_err().contains("deeper"));
        assert!(evaluate(&"1+".repeat(600)).unwrap_err().contains("longer"));
    }
}
