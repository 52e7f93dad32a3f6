//! The few elements of S3's XML answers a client needs (`Key`, `Size`, `UploadId`,
//! `IsTruncated`, `NextContinuationToken`, `Code`, `Message`): S3's answers are flat
//! documents of text elements, read here by tag, with the five predefined entities and
//! numeric character references decoded. Not a general XML parser: attributes,
//! namespaces, CDATA and comments inside the wanted elements are not S3's.

/// The text of every `<tag>...</tag>` in `xml`, in order.
pub fn all(xml: &str, tag: &str) -> Vec<String> {
    blocks(xml, tag).into_iter().map(decode).collect()
}

/// The text of the first `<tag>...</tag>`.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    blocks(xml, tag).into_iter().next().map(decode)
}

/// The raw inside of every `<tag>...</tag>` (nested elements kept), in order.
pub fn blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, open_attrs, close) = (format!("<{tag}>"), format!("<{tag} "), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    loop {
        let start = match (rest.find(&open), rest.find(&open_attrs)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        let Some(gt) = rest[start..].find('>') else { break };
        let body_start = start + gt + 1;
        if rest[..body_start].ends_with("/>") {
            found.push("");
            rest = &rest[body_start..];
            continue;
        }
        let Some(end) = rest[body_start..].find(&close) else { break };
        found.push(&rest[body_start..body_start + end]);
        rest = &rest[body_start + end + close.len()..];
    }
    found
}

/// `text` with `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;` and `&#N;`/`&#xN;` decoded.
pub fn decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` escaped for an XML element's content.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
