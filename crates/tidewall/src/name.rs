//! Policy names: owned, cheap to clone, and free to use as metric labels.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The name of a policy instance: the `name` label of its metrics and the name in its tracing
/// events.
///
/// A literal is kept as a `&'static str`; a name made at run time (read from a configuration
/// file, say) is kept behind an `Arc`, so cloning a `Name` never copies the text and
/// labelling a metric with it never allocates. Every builder's `name` method takes
/// `impl Into<Name>`: a literal, a `String`, a `Box<str>` or an `Arc<str>`.
///
/// Names compare, hash and order as their text, whichever way they are kept.
///
/// ```
/// use tidewall::Name;
///
/// let literal = Name::from("payments");
/// let loaded = Name::from(String::from("payments"));
/// assert_eq!(literal, loaded);
/// assert_eq!(loaded.as_str(), "payments");
/// assert_eq!(loaded.to_string(), "payments");
/// ```
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// A name from a literal, in a `const` context.
    ///
    /// ```
    /// use tidewall::Name;
    ///
    /// const PAYMENTS: Name = Name::from_static("payments");
    /// assert_eq!(PAYMENTS, "payments");
    /// ```
    pub const fn from_static(name: &'static str) -> Self {
        Self(Repr::Static(name))
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(name) => name,
            Repr::Shared(name) => name,
        }
    }

    /// The name as a metrics label value: a pointer copy or a reference count, no allocation.
    #[cfg(feature = "metrics")]
    pub(crate) fn label(&self) -> metrics::SharedString {
        match &self.0 {
            Repr::Static(name) => metrics::SharedString::const_str(name),
            Repr::Shared(name) => metrics::SharedString::from(Arc::clone(name)),
        }
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Name {
    fn from(name: &'static str) -> Self {
        Self::from_static(name)
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Self(Repr::Shared(name.into()))
    }
}

impl From<Box<str>> for Name {
    fn from(name: Box<str>) -> Self {
        Self(Repr::Shared(name.into()))
    }
}

impl From<Arc<str>> for Name {
    fn from(name: Arc<str>) -> Self {
        Self(Repr::Shared(name))
    }
}

impl From<&Name> for Name {
    fn from(name: &Name) -> Self {
        name.clone()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Name {
    // As `str` hashes, so that `Borrow<str>` lookups in hash maps find the name.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_shared_name_is_found_by_its_text() {
        let mut map = HashMap::new();
        map.insert(Name::from(String::from("orders")), 1);
        map.insert(Name::from("payments"), 2);
        assert_eq!(map.get("orders"), Some(&1));
        assert_eq!(map.get("payments"), Some(&2));
    }

    #[test]
    fn names_order_by_their_text_however_they_are_kept() {
        let mut names = [
            Name::from(String::from("b")),
            Name::from("c"),
            Name::from(Arc::<str>::from("a")),
        ];
        names.sort();
        assert_eq!(names.map(|n| n.to_string()), ["a", "b", "c"]);
    }
}
