//! [`Tier`] (where a cache keeps its values) and [`Key`] (one entry's logical key and tags).

/// Where a cache keeps its values.
///
/// ```
/// use cache_runtime::Tier;
/// assert!(Tier::LocalRedis.has_local() && Tier::LocalRedis.has_redis());
/// assert_eq!(Tier::Redis.to_string(), "redis");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// In process only (a sharded S3-FIFO store, `quick_cache`: docs/LOCAL_TIER.md).
    Local,
    /// Redis only, shared by every process.
    Redis,
    /// Both; local first.
    LocalRedis,
}

impl Tier {
    /// Whether the tier includes the in-process cache.
    pub fn has_local(self) -> bool {
        matches!(self, Tier::Local | Tier::LocalRedis)
    }
    /// Whether the tier includes Redis.
    pub fn has_redis(self) -> bool {
        matches!(self, Tier::Redis | Tier::LocalRedis)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Local => "local",
            Tier::Redis => "redis",
            Tier::LocalRedis => "local+redis",
        })
    }
}

/// The key of one entry: the template's output, plus the entry's tags.
///
/// ```
/// use cache_runtime::Key;
/// let k = Key::new("user:42").with_tags(vec!["tenant:7".into()]);
/// assert_eq!(k.as_str(), "user:42");
/// assert_eq!(k.tags(), ["tenant:7".to_string()]);
/// let plain: Key = "user:42".into();
/// assert!(plain.tags().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub(crate) logical: String,
    pub(crate) tags: Vec<String>,
}

impl Key {
    /// A key without tags.
    pub fn new(logical: impl Into<String>) -> Self {
        Self {
            logical: logical.into(),
            tags: Vec::new(),
        }
    }

    /// The same key with tags (see `tags = [...]` on the attribute).
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The logical key (without prefix and versions).
    pub fn as_str(&self) -> &str {
        &self.logical
    }

    /// The entry's tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.logical
    }
}

impl From<String> for Key {
    fn from(logical: String) -> Self {
        Key::new(logical)
    }
}

impl From<&str> for Key {
    fn from(logical: &str) -> Self {
        Key::new(logical)
    }
}

impl From<&String> for Key {
    fn from(logical: &String) -> Self {
        Key::new(logical.clone())
    }
}
