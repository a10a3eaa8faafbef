//! A single-pass scanner for the CloudEvents envelope: the fast path of
//! [`crate::event::EventView::parse`].
//!
//! It accepts only plain input (valid UTF-8, no backslash escapes, no control characters in
//! strings, nesting at most [`MAX_DEPTH`], no repeated envelope attribute) and borrows every
//! attribute from the payload. For anything else it returns `None` and the caller uses the
//! serde reference path, so it must never accept an input serde would refuse, nor produce a
//! different envelope: it is deliberately stricter than JSON, never looser.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::data::CowStr;
use crate::event::Envelope;

/// Deeper nesting is left to the reference path (serde_json refuses beyond 128).
const MAX_DEPTH: usize = 64;

/// Scans `bytes` as an envelope, or `None` when the reference path must decide.
pub(crate) fn scan(bytes: &[u8]) -> Option<Envelope<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut env = Envelope::default();
    let mut seen = 0u8;
    Scanner::new(text).whole_object(|s, key| {
        let slot = match key {
            "specversion" => Some((0, &mut env.specversion)),
            "id" => Some((1, &mut env.id)),
            "source" => Some((2, &mut env.source)),
            "subject" => Some((3, &mut env.subject)),
            "type" => Some((4, &mut env.event_type)),
            "time" => Some((5, &mut env.time)),
            "holdid" => Some((7, &mut env.holdid)),
            _ => None,
        };
        if let Some((bit, field)) = slot {
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            *field = s.optional_string()?;
        } else if key == "data" {
            if seen & (1 << 6) != 0 {
                return None;
            }
            seen |= 1 << 6;
            env.data = s.optional_raw()?;
        } else {
            s.value(1)?;
        }
        Some(())
    })?;
    Some(env)
}

/// The top-level members of the JSON object `text` as (key, raw value text) pairs in input
/// order, borrowed, with the same strictness as [`scan`] (a key with an escape, for one, gives
/// `None`): the fast path of `data::DataView`, whose input is already valid JSON. `None` means
/// the reference path (serde) must decide.
pub(crate) fn members(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::with_capacity(4);
    Scanner::new(text).whole_object(|s, key| {
        let start = s.pos;
        s.value(1)?;
        out.push((key, text.get(start..s.pos)?));
        Some(())
    })?;
    Some(out)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            b: text.as_bytes(),
            pos: 0,
        }
    }

    /// The whole input as one object (whitespace around it): `member` reads each member's
    /// value, positioned after its key and colon.
    fn whole_object(
        mut self,
        mut member: impl FnMut(&mut Scanner<'a>, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.ws();
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                let key = self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                member(&mut self, key)?;
                if self.after_member(b'}')? {
                    break;
                }
            }
        }
        self.ws();
        (self.pos == self.b.len()).then_some(())
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.b.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string without escapes or control characters; its content, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        loop {
            match *self.b.get(self.pos)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        let s = self.text.get(start..self.pos)?;
        self.pos += 1;
        Some(s)
    }

    /// A string attribute: `null` is absent, anything else than a string is left to serde.
    fn optional_string(&mut self) -> Option<Option<CowStr<'a>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        Some(Some(CowStr(Cow::Borrowed(self.string()?))))
    }

    /// The `data` attribute's raw text: `null` is absent.
    fn optional_raw(&mut self) -> Option<Option<&'a RawValue>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let start = self.pos;
        self.value(1)?;
        serde_json::from_str::<&'a RawValue>(self.text.get(start..self.pos)?)
            .ok()
            .map(Some)
    }

    /// Skips one JSON value at nesting `depth`, checking it.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(b'}', depth),
            b'[' => self.container(b']', depth),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// The members of an object (`close` is `}`) or array (`]`) after its opening byte.
    fn container(&mut self, close: u8, depth: usize) -> Option<()> {
        self.pos += 1;
        self.ws();
        if self.peek()? == close {
            self.pos += 1;
            return Some(());
        }
        loop {
            if close == b'}' {
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth + 1)?;
            if self.after_member(close)? {
                return Some(());
            }
        }
    }

    /// After a member: `,` (then `false`, more follow) or `close` (then `true`).
    fn after_member(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let b = self.peek()?;
        self.pos += 1;
        if b == close {
            return Some(true);
        }
        (b == b',').then(|| self.ws())?;
        Some(false)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}
