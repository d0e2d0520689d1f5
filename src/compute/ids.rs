//! EC2-style resource ids for what `kumo run` creates: `i-`, `eni-`, `vpc-`, `subnet-`, `sg-`,
//! `r-` and 17 lowercase hex digits (kumo-net's generator, so the switch and the control plane
//! mint ids the same way).

/// A new id with this prefix (`i`, `vpc`, ...): `i-0a1b2c3d4e5f60718`.
pub fn new_id(prefix: &str) -> String {
    kumo_net::addr::new_id(prefix)
}

/// A new instance id.
pub fn new_instance_id() -> String {
    new_id("i")
}

/// Whether `id` is `prefix` + `-` + 17 lowercase hex digits.
pub fn is_valid(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            hex.len() == 17
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The hex digits of an id (`i-0a1b...` -> `0a1b...`).
pub fn hex_part(id: &str) -> &str {
    id.split_once('-').map_or(id, |(_, hex)| hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_ec2_form() {
        for prefix in ["i", "eni", "vpc", "subnet", "sg", "r"] {
            let id = new_id(prefix);
            assert!(is_valid(&id, prefix), "{id}");
            assert_eq!(id.len(), prefix.len() + 1 + 17);
        }
        assert!(is_valid(&new_instance_id(), "i"));
        assert_ne!(new_instance_id(), new_instance_id());
    }

    #[test]
    fn validation_rejects_near_misses() {
        assert!(is_valid("i-0123456789abcdef0", "i"));
        assert!(!is_valid("i-0123456789ABCDEF0", "i"), "uppercase");
        assert!(!is_valid("i-0123456789abcdef", "i"), "16 digits");
        assert!(!is_valid("i-0123456789abcdef01", "i"), "18 digits");
        assert!(!is_valid("i-0123456789abcdeg0", "i"), "not hex");
        assert!(!is_valid("eni-0123456789abcdef0", "i"), "other prefix");
        assert!(!is_valid("i0123456789abcdef0", "i"), "no dash");
        assert!(!is_valid("", "i"));
    }

    #[test]
    fn hex_part_strips_the_prefix() {
        assert_eq!(hex_part("i-0123456789abcdef0"), "0123456789abcdef0");
        assert_eq!(hex_part("subnet-0123456789abcdef0"), "0123456789abcdef0");
    }
}
