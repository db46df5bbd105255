//! Deterministic bookshop `order_placed` events for load tests and benchmarks (about
//! 440 bytes of JSON with a nested `items` array, in the bookshop's markets and
//! currencies), generated from a seed so every run sends the same bytes.

use std::fmt::Write as _;

/// The bookshop's markets: (country, currency, regions as ISO 3166-2 subdivision codes,
/// weight, the currency's units per US dollar of list price, its decimals). US:
/// California, Oregon, New York, Montana; Germany: Berlin; Japan: Tokyo (13); Ethiopia:
/// Addis Ababa (AA).
type Market = (
    &'static str,
    &'static str,
    &'static [&'static str],
    u32,
    f64,
    i32,
);
const COUNTRIES: &[Market] = &[
    ("US", "USD", &["CA", "OR", "NY", "MT"], 45, 1.0, 2),
    ("DE", "EUR", &["BE"], 25, 0.92, 2),
    ("JP", "JPY", &["13"], 20, 150.0, 0),
    ("ET", "ETB", &["AA"], 10, 120.0, 2),
];
const ADJ: &[&str] = &[
    "Silent",
    "Hidden",
    "Crimson",
    "Last",
    "Broken",
    "Golden",
    "Distant",
    "Quiet",
    "Wandering",
    "Forgotten",
    "Electric",
    "Winter",
    "Burning",
    "Paper",
    "Glass",
    "Midnight",
    "Lost",
    "Northern",
    "Secret",
    "Endless",
    "Little",
    "Wild",
    "Brave",
];
const NOUN: &[&str] = &[
    "Garden",
    "River",
    "Kingdom",
    "Library",
    "Orchard",
    "Harbor",
    "Cartographer",
    "Lighthouse",
    "Archive",
    "Mountain",
    "Compass",
    "Station",
    "Daughter",
    "Empire",
    "Sparrow",
    "Clockmaker",
    "Island",
    "Alphabet",
    "Machine",
    "Forest",
    "Letters",
];
const TAIL: &[&str] = &[
    "",
    "",
    "",
    ": A Novel",
    ": Stories",
    " (2nd Edition)",
    ": A History",
    ", Volume II",
    ": Poems",
    " & Other Essays",
];
const COUPONS: &[(&str, f64)] = &[
    ("SPRING10", 0.10),
    ("BOOKWORM5", 0.05),
    ("FREESHIP", 0.0),
    ("WELCOME15", 0.15),
    ("SUMMERREAD", 0.08),
];
const PRICES: &[f64] = &[4.99, 7.99, 9.99, 12.5, 14.99, 18.0, 24.95, 32.0, 59.99];
const PRICE_BUMPS: &[f64] = &[0.0, 0.0, 0.0, 1.0, 2.0, 5.0];
/// 2024-05-01T00:00:00Z in Unix microseconds.
const BASE_MICROS: i64 = 1_714_521_600_000_000;

struct Book {
    isbn: String,
    title: String,
    price: f64,
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// An index drawn with the given weights.
fn weighted(rng: &mut fastrand::Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.u32(..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

fn isbn13(rng: &mut fastrand::Rng) -> String {
    let mut digits = vec![9u32, 7, 8];
    digits.extend((0..9).map(|_| rng.u32(..10)));
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits.iter().map(|d| char::from(b'0' + *d as u8)).collect()
}

fn catalog(rng: &mut fastrand::Rng) -> Vec<Book> {
    (0..5000)
        .map(|_| {
            let mut title = format!(
                "The {} {}{}",
                pick(rng, ADJ),
                pick(rng, NOUN),
                pick(rng, TAIL)
            );
            if rng.f64() < 0.3 {
                title = format!(
                    "{}s of the {} {}",
                    pick(rng, NOUN),
                    pick(rng, ADJ),
                    pick(rng, NOUN)
                );
            }
            let price = ((pick(rng, PRICES) + pick(rng, PRICE_BUMPS)) * 100.0).round() / 100.0;
            Book {
                isbn: isbn13(rng),
                title,
                price,
            }
        })
        .collect()
}

fn uuid_v4(rng: &mut fastrand::Rng) -> String {
    let mut b = rng.u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `n` events as compact JSON texts, the same for the same `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let books = catalog(&mut rng);
    let weights: Vec<u32> = COUNTRIES.iter().map(|c| c.3).collect();
    let mut micros = 0i64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (country, currency, regions, _, per_usd, decimals) =
            COUNTRIES[weighted(&mut rng, &weights)];
        let unit = 10f64.powi(decimals);
        let local = |usd: f64| (usd * per_usd * unit).round() / unit;
        let k = weighted(&mut rng, &[40, 30, 15, 10, 5]) + 1;
        let mut items = String::from("[");
        let (mut subtotal, mut count) = (0.0, 0u32);
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let b = rng.usize(..books.len());
            if !chosen.contains(&b) {
                chosen.push(b);
            }
        }
        for (j, b) in chosen.iter().enumerate() {
            let book = &books[*b];
            let price = local(book.price);
            let qty = weighted(&mut rng, &[85, 12, 3]) as u32 + 1;
            subtotal += f64::from(qty) * price;
            count += qty;
            if j > 0 {
                items.push(',');
            }
            let _ = write!(
                items,
                r#"{{"isbn":"{}","title":"{}","qty":{qty},"unit_price":{}}}"#,
                book.isbn, book.title, price
            );
        }
        items.push(']');
        let coupon = (rng.f64() < 0.15).then(|| *pick(&mut rng, COUPONS));
        let rate = coupon.map_or(0.0, |c| c.1);
        let total = (subtotal * (1.0 - rate) * unit).round() / unit;
        micros += rng.i64(1000..60000);
        let at = chrono::DateTime::from_timestamp_micros(BASE_MICROS + micros).unwrap_or_default();
        let coupon = coupon.map_or_else(|| "null".to_owned(), |c| format!("\"{}\"", c.0));
        out.push(format!(
            r#"{{"event_id":"{}","occurred_at":"{}","customer_id":{},"order_id":"BK-{:010}","country":"{country}","region":"{}","currency":"{currency}","total_amount":{total},"item_count":{count},"items":{items},"coupon":{coupon}}}"#,
            uuid_v4(&mut rng),
            at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            rng.i64(1..=2_000_000),
            i + 1,
            pick(&mut rng, regions),
        ));
    }
    out
}

/// `event` (a generated order) with its items repeated to `n` of them, and `item_count`
/// following: the large orders of the benches' cost per KB.
pub fn with_items(event: &str, n: usize) -> serde_json::Result<String> {
    let mut order: serde_json::Value = serde_json::from_str(event)?;
    let items = order["items"].as_array().cloned().unwrap_or_default();
    let items: Vec<serde_json::Value> = items.iter().cycle().take(n).cloned().collect();
    let count: u64 = items.iter().filter_map(|i| i["qty"].as_u64()).sum();
    order["items"] = items.into();
    order["item_count"] = count.into();
    Ok(order.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_deterministic_valid_json_of_about_450_bytes() {
        let a = generate(1000, 7);
        assert_eq!(a, generate(1000, 7));
        assert_ne!(a, generate(1000, 8));
        let mean = a.iter().map(String::len).sum::<usize>() / a.len();
        assert!((300..600).contains(&mean), "mean {mean} bytes");
        for e in &a {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            assert!(v["items"].as_array().is_some_and(|i| !i.is_empty()));
        }
    }

    #[test]
    fn events_are_in_the_bookshops_markets_and_currencies() {
        let markets = [
            ("US", "USD", vec!["CA", "OR", "NY", "MT"]),
            ("DE", "EUR", vec!["BE"]),
            ("JP", "JPY", vec!["13"]),
            ("ET", "ETB", vec!["AA"]),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in generate(2000, 3) {
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            let country = v["country"].as_str().unwrap();
            let (_, currency, regions) = markets
                .iter()
                .find(|m| m.0 == country)
                .unwrap_or_else(|| panic!("{country} is not a market"));
            assert_eq!(v["currency"], *currency);
            assert!(regions.contains(&v["region"].as_str().unwrap()), "{e}");
            if country == "JP" {
                assert!(v["total_amount"].as_f64().unwrap().fract() == 0.0, "{e}");
            }
            seen.insert(country.to_owned());
        }
        assert_eq!(seen.len(), 4, "every market appears");
    }
}
