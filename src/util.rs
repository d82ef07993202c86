//! Small helpers shared by the boot's modules.

use std::cmp::Ordering;

/// Sorts `v` stably by `cmp`. Every caller shares one instance of the standard
/// sort (of indices, comparing through `cmp` as a trait object) instead of one
/// instance per element type and ordering, each 3–4 KB of /init.
pub fn sort_by<T>(v: &mut Vec<T>, cmp: &dyn Fn(&T, &T) -> Ordering) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    sort_indices(&mut order, &|a, b| cmp(&v[a], &v[b]));
    let mut slots: Vec<Option<T>> = v.drain(..).map(Some).collect();
    v.extend(order.into_iter().filter_map(|i| slots[i].take()));
}

/// [`sort_by`] in the elements' own order.
pub fn sort<T: Ord>(v: &mut Vec<T>) {
    sort_by(v, &T::cmp)
}

fn sort_indices(order: &mut [usize], cmp: &dyn Fn(usize, usize) -> Ordering) {
    order.sort_by(|&a, &b| cmp(a, b));
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_stably() {
        let mut v = vec!["b", "a", "c", "a"];
        sort(&mut v);
        assert_eq!(v, ["a", "a", "b", "c"]);
        let mut v = vec![(1, 'x'), (0, 'y'), (1, 'a'), (0, 'b')];
        sort_by(&mut v, &|a, b| a.0.cmp(&b.0));
        assert_eq!(v, [(0, 'y'), (0, 'b'), (1, 'x'), (1, 'a')]);
        let mut e: Vec<String> = Vec::new();
        sort(&mut e);
        assert!(e.is_empty());
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}
