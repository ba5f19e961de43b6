//! Where a verb's results go: an aligned table for people, or JSON Lines for
//! scripts. A closed pipe (`xenmaint list | head -1`) is not an error.

use std::io::{self, Write};
use std::sync::Mutex;

use serde::Serialize;

use crate::domain::printable;

/// Shared by the verb and the threads that report progress, hence the lock.
pub struct Output {
    pub json: bool,
    /// Results came from the simulator: every JSON object says so, and human
    /// output starts with a banner.
    pub simulated: Option<String>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Output {
    pub fn new(json: bool, simulated: Option<String>, out: Box<dyn Write + Send>) -> Output {
        Output {
            json,
            simulated,
            out: Mutex::new(out),
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The human banner for simulated output; printed once, first.
    pub fn banner(&self) -> io::Result<()> {
        if let (false, Some(src)) = (self.json, &self.simulated) {
            writeln!(
                self.writer(),
                "# SIMULATED HOST ({}): not a real Xen host",
                printable(src)
            )?;
        }
        Ok(())
    }

    /// One JSON Lines record: `value`'s fields plus `"simulated"`.
    pub fn record<T: Serialize>(&self, value: &T) -> io::Result<()> {
        let mut v = serde_json::to_value(value).map_err(io::Error::other)?;
        if let serde_json::Value::Object(map) = &mut v {
            map.insert(
                "simulated".into(),
                serde_json::Value::Bool(self.simulated.is_some()),
            );
        }
        let mut line = serde_json::to_vec(&v).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per record, so lines from two threads never interleave.
        let mut w = self.writer();
        w.write_all(&line)?;
        w.flush()
    }

    /// A JSON Lines event: `{"event": name, ...fields of value}`.
    pub fn event<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let mut v = serde_json::to_value(value).map_err(io::Error::other)?;
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("event".into(), serde_json::Value::String(name.into()));
        }
        self.record(&v)
    }

    pub fn line(&self, text: &str) -> io::Result<()> {
        writeln!(self.writer(), "{text}")
    }

    /// Left-aligned columns, two spaces apart; cells are made printable.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.iter().map(|c| printable(c)).collect())
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        for r in std::iter::once(&head).chain(&rows) {
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            writeln!(self.writer(), "{}", line.trim_end())?;
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        self.writer().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(b: &Buf) -> String {
        String::from_utf8(b.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn table_aligns_and_escapes() {
        let b = Buf::default();
        let o = Output::new(false, None, Box::new(b.clone()));
        o.table(
            &["NAME", "ID"],
            &[
                vec!["a".into(), "0".into()],
                vec!["long\nname".into(), "12".into()],
            ],
        )
        .unwrap();
        assert_eq!(text(&b), "NAME        ID\na           0\nlong\\nname  12\n");
    }

    #[test]
    fn records_carry_the_simulated_flag() {
        let b = Buf::default();
        let o = Output::new(true, Some("x.json".into()), Box::new(b.clone()));
        o.banner().unwrap();
        o.record(&serde_json::json!({"name": "a\nb"})).unwrap();
        let t = text(&b);
        assert_eq!(t.lines().count(), 1, "no banner in JSON mode: {t:?}");
        let v: serde_json::Value = serde_json::from_str(t.trim_end()).unwrap();
        assert_eq!(v["simulated"], true);
        assert_eq!(v["name"], "a\nb");

        let b = Buf::default();
        let o = Output::new(false, Some("x.json".into()), Box::new(b.clone()));
        o.banner().unwrap();
        assert!(text(&b).starts_with("# SIMULATED HOST (x.json)"));
    }
}
