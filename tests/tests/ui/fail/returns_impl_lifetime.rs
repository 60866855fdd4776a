use cache_runtime::cached;
use std::borrow::Cow;

pub struct Svc<'a> {
    pub prefix: &'a str,
}

impl<'a> Svc<'a> {
    // A lifetime of the `impl`, not of the function.
    #[cached(ttl = 60, skip(self))]
    pub fn name(&self, id: u64) -> Cow<'a, str> {
        if id == 0 {
            Cow::Borrowed(self.prefix)
        } else {
            Cow::Owned(format!("{}{id}", self.prefix))
        }
    }

    // Inside a type: every lifetime but `'static`.
    #[cached(ttl = 60, skip(self))]
    pub fn names(&self, id: u64) -> Vec<Option<&'a str>> {
        vec![Some(self.prefix); id as usize]
    }

    // A lifetime elided in a path.
    #[cached(ttl = 60, skip(self))]
    pub fn label(&self, id: u64) -> Cow<str> {
        if id == 0 {
            Cow::Borrowed(self.prefix)
        } else {
            Cow::Owned(id.to_string())
        }
    }
}

fn main() {}
