//! The routing table: k-buckets over the 160-bit id space, split the way the Python package
//! splits them, each with a bounded replacement cache, and a cap on how much of each bucket one
//! IP address holds (which Python lacks). Pure data, no I/O: the caller does the pinging that
//! [`Insert::BucketFull`] asks for and reports failures with [`RoutingTable::remove`].

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::codec::{Contact, PeerAddr};
use crate::id::{NodeId, ID_LEN};

/// Python keeps up to `5 * k` replacement contacts per bucket.
pub const REPLACEMENT_FACTOR: usize = 5;

/// Python splits a full bucket that does not hold the own id only when its depth is not a
/// multiple of this (section 4.2 of the Kademlia paper).
const SPLIT_DEPTH_MODULUS: u32 = 5;

/// Most contacts one IP address holds in one bucket (and in its replacement cache) unless
/// configured otherwise: a few nodes behind one NAT or on one host still fit, while one host
/// that makes up ids at will takes at most this many of a bucket's k slots, so it can neither
/// fill the buckets near this node's id (an eclipse) nor force them to split.
pub const DEFAULT_MAX_CONTACTS_PER_IP: usize = 3;

/// A contact as [`RoutingTable::closest`] ranks it: the first 8 bytes of its distance to the
/// target, and its place (bucket, slot) in the table.
type Ranked = (u64, (u32, u32));

thread_local! {
    /// [`RoutingTable::closest`]'s buffers: the contacts ranked, and a bucket's share placed.
    static RANKED_OF_THREAD: RefCell<(Vec<Ranked>, PrefixOrder)> =
        const { RefCell::new((Vec::new(), PrefixOrder { keys: Vec::new(), placed: Vec::new() })) };
}

/// Scratch of [`order_by_prefix`]: a share's keys with their places, and its nearest in order.
struct PrefixOrder {
    keys: Vec<u64>,
    placed: Vec<Ranked>,
}

/// Puts the `wanted` nearest of `share` at its front in order: its keys, each with its place
/// in the share in the low 8 bits, sorted as plain integers, which took a sixth off
/// `closest()` against comparing (key, place) pairs. False, with `share` untouched, when two
/// keys agree above those 8 bits (or the share is too long to number in 8 bits): the caller
/// then ranks by the whole distance.
fn order_by_prefix(share: &mut [Ranked], wanted: usize, scratch: &mut PrefixOrder) -> bool {
    const PLACE_BITS: u32 = 8;
    let place_mask = (1u64 << PLACE_BITS) - 1;
    if share.len() > 1 << PLACE_BITS {
        return false;
    }
    let PrefixOrder { keys, placed } = scratch;
    keys.clear();
    keys.extend(share.iter().zip(0..).map(|(item, place)| (item.0 & !place_mask) | place));
    keys.sort_unstable();
    if keys.windows(2).any(|pair| pair[0] >> PLACE_BITS == pair[1] >> PLACE_BITS) {
        return false;
    }
    placed.clear();
    placed.extend(keys.iter().take(wanted).map(|&key| share[(key & place_mask) as usize]));
    share[..placed.len()].copy_from_slice(placed);
    true
}

/// What the per-IP cap counts a contact under: its IP address, except on loopback, where every
/// node of a one-machine setup (tests, `dht-node cluster`) shares the IP and only the port tells
/// nodes apart, so there the cap counts per IP and port.
pub(crate) fn source_of(addr: &PeerAddr) -> PeerAddr {
    if addr.is_loopback() {
        *addr
    } else {
        addr.with_port(0)
    }
}

/// 20 id or distance bytes as big-endian integers (first 16 bytes, last 4), ordered as the
/// bytes are: XOR distances come from two integer XORs and compare in two integer compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DistanceKey(u128, u32);

impl DistanceKey {
    const ZERO: DistanceKey = DistanceKey(0, 0);

    fn of(bytes: &[u8; ID_LEN]) -> DistanceKey {
        let (high, low) = bytes.split_at(16);
        let high: [u8; 16] = high.try_into().expect("split at 16 of 20 bytes");
        let low: [u8; 4] = low.try_into().expect("split at 16 of 20 bytes");
        DistanceKey(u128::from_be_bytes(high), u32::from_be_bytes(low))
    }

    /// The key of the distance `self ^ other`, both keys of ids.
    fn xor(self, other: DistanceKey) -> DistanceKey {
        DistanceKey(self.0 ^ other.0, self.1 ^ other.1)
    }
}

/// What [`RoutingTable::add`] did with a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The contact is new in its bucket.
    Added,
    /// The contact was known; it is now the most recently seen of its bucket.
    Refreshed,
    /// The bucket is full and cannot split, or the contact's IP address already holds its
    /// share of the bucket: the contact waits in the replacement cache. The caller should ping
    /// `least_recent` (in the second case the least recently seen contact of that IP, so that a
    /// node restarted with a new id replaces its old self); if it fails to answer,
    /// [`RoutingTable::remove`] it and the newest replacement that fits takes its place.
    BucketFull { least_recent: Contact },
    /// The contact carries the table's own id and is never stored.
    OwnId,
}

/// What [`Bucket::add`] did with a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BucketAdd {
    /// New in the bucket proper.
    Added,
    /// Already in the bucket proper: now its most recently seen.
    Refreshed,
    /// The bucket holds k contacts; the contact waits in the replacement cache.
    Full,
    /// The contact's IP already holds its share of the bucket; the contact waits in the
    /// replacement cache. `least_recent` is that IP's least recently seen contact.
    SourceFull { least_recent: Contact },
}

/// The bounds every bucket of a table keeps.
#[derive(Clone, Copy, Debug)]
struct Limits {
    k: usize,
    max_replacements: usize,
    max_per_ip: usize,
}

#[derive(Clone, Debug)]
struct Bucket {
    /// Inclusive range of ids this bucket covers.
    low: NodeId,
    high: NodeId,
    /// Least recently seen first, as Python's OrderedDict.
    contacts: Vec<Contact>,
    /// Oldest first; the newest is promoted when a contact is removed.
    replacements: Vec<Contact>,
    last_touched: Instant,
}

impl Bucket {
    fn new(low: NodeId, high: NodeId, now: Instant) -> Bucket {
        Bucket { low, high, contacts: Vec::new(), replacements: Vec::new(), last_touched: now }
    }

    fn covers(&self, id: &NodeId) -> bool {
        self.low <= *id && *id <= self.high
    }

    /// The smallest distance from `target` (an id's key) to any id in this bucket's range.
    /// Ranges are aligned blocks (`high = low | (2^m - 1)`), so it is `(target ^ low)` with
    /// the m free bits cleared.
    fn nearest_distance(&self, target: DistanceKey) -> DistanceKey {
        let (low, high) = (DistanceKey::of(&self.low.0), DistanceKey::of(&self.high.0));
        let free_bits = low.xor(high);
        let distance = target.xor(low);
        DistanceKey(distance.0 & !free_bits.0, distance.1 & !free_bits.1)
    }

    /// Python's `KBucket.add_node`, with at most `max_per_ip` contacts of one IP address.
    fn add(&mut self, contact: Contact, limits: Limits) -> BucketAdd {
        if let Some(index) = self.contacts.iter().position(|known| known.id == contact.id) {
            // Most recently seen now; the known address stays, so that a datagram claiming
            // a known id from elsewhere cannot redirect it (Python ignores it too).
            let known = self.contacts.remove(index);
            self.contacts.push(known);
            return BucketAdd::Refreshed;
        }
        let source = source_of(&contact.addr);
        let mut same_source = self.contacts.iter().filter(|known| source_of(&known.addr) == source);
        if let Some(least_recent) = same_source.next().copied() {
            if 1 + same_source.count() >= limits.max_per_ip {
                self.wait_as_replacement(contact, limits);
                return BucketAdd::SourceFull { least_recent };
            }
        }
        if self.contacts.len() < limits.k {
            // It may have waited as a replacement under an address that had no room.
            self.replacements.retain(|known| known.id != contact.id);
            let len = self.contacts.len();
            if len == self.contacts.capacity() {
                // Doubling, but never past k: a full bucket of 25 would keep room for 32.
                self.contacts.reserve_exact((len * 2).max(4).min(limits.k) - len);
            }
            self.contacts.push(contact);
            return BucketAdd::Added;
        }
        self.wait_as_replacement(contact, limits);
        BucketAdd::Full
    }

    /// Puts `contact` last in the replacement cache, where one IP address also keeps at most
    /// `max_per_ip` entries (its oldest makes room), so that it cannot crowd out the others.
    fn wait_as_replacement(&mut self, contact: Contact, limits: Limits) {
        self.replacements.retain(|known| known.id != contact.id);
        let source = source_of(&contact.addr);
        let same_source =
            self.replacements.iter().filter(|known| source_of(&known.addr) == source).count();
        if same_source >= limits.max_per_ip {
            if let Some(oldest) =
                self.replacements.iter().position(|known| source_of(&known.addr) == source)
            {
                self.replacements.remove(oldest);
            }
        }
        self.replacements.push(contact);
        if self.replacements.len() > limits.max_replacements {
            let excess = self.replacements.len() - limits.max_replacements;
            self.replacements.drain(..excess);
        }
    }

    /// Moves the newest replacement whose IP address has room in the bucket proper into it.
    fn promote_replacement(&mut self, limits: Limits) {
        let contacts = &self.contacts;
        let has_room = |candidate: &Contact| {
            let source = source_of(&candidate.addr);
            contacts.iter().filter(|known| source_of(&known.addr) == source).count()
                < limits.max_per_ip
        };
        if let Some(position) = self.replacements.iter().rposition(has_room) {
            let replacement = self.replacements.remove(position);
            self.contacts.push(replacement);
        }
    }

    /// Length of the id prefix that all contacts share (Python's `KBucket.depth`).
    fn depth(&self) -> u32 {
        let Some(first) = self.contacts.first() else {
            return 0;
        };
        self.contacts
            .iter()
            .map(|contact| first.id.shared_prefix_len(&contact.id))
            .min()
            .unwrap_or(0)
    }
}

/// k-buckets around one node's own id.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own_id: NodeId,
    limits: Limits,
    /// Sorted by range, covering the whole id space without overlap.
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// A table with buckets of `k` and [`DEFAULT_MAX_CONTACTS_PER_IP`].
    pub fn new(own_id: NodeId, k: usize) -> RoutingTable {
        RoutingTable {
            own_id,
            limits: Limits {
                k,
                max_replacements: k * REPLACEMENT_FACTOR,
                max_per_ip: DEFAULT_MAX_CONTACTS_PER_IP,
            },
            buckets: vec![Bucket::new(NodeId::ZERO, NodeId::MAX, Instant::now())],
        }
    }

    /// At most `max` contacts of one IP address per bucket and per replacement cache (per IP
    /// and port on loopback); 0 counts as 1. Contacts already held stay.
    pub fn with_max_contacts_per_ip(mut self, max: usize) -> RoutingTable {
        self.limits.max_per_ip = max.max(1);
        self
    }

    /// Number of contacts in buckets proper (replacements not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|bucket| bucket.contacts.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|bucket| bucket.contacts.is_empty())
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn bucket_index(&self, id: &NodeId) -> usize {
        // The buckets tile the id space, so the first whose upper end is >= id holds it.
        self.buckets.partition_point(|bucket| bucket.high < *id).min(self.buckets.len() - 1)
    }

    /// True when no bucket proper holds a contact with this id (Python's `is_new_node`).
    pub fn is_new(&self, id: &NodeId) -> bool {
        let bucket = &self.buckets[self.bucket_index(id)];
        !bucket.contacts.iter().any(|contact| contact.id == *id)
    }

    /// The contact with this id, if a bucket proper holds it.
    pub fn get(&self, id: &NodeId) -> Option<Contact> {
        let bucket = &self.buckets[self.bucket_index(id)];
        bucket.contacts.iter().find(|contact| contact.id == *id).copied()
    }

    /// Adds or refreshes a contact, splitting buckets as Python's `RoutingTable.add_contact`.
    pub fn add(&mut self, contact: Contact) -> Insert {
        if contact.id == self.own_id {
            return Insert::OwnId;
        }
        let (now, mut split) = (Instant::now(), false);
        loop {
            let index = self.bucket_index(&contact.id);
            let limits = self.limits;
            let bucket = &mut self.buckets[index];
            bucket.last_touched = now;
            match bucket.add(contact, limits) {
                BucketAdd::Added => return Insert::Added,
                // After a split: the contact this call left in the replacement cache, now placed.
                BucketAdd::Refreshed if split => return Insert::Added,
                BucketAdd::Refreshed => return Insert::Refreshed,
                // No split: one address must not make buckets split that others did not fill.
                BucketAdd::SourceFull { least_recent } => {
                    return Insert::BucketFull { least_recent }
                }
                BucketAdd::Full => {}
            }
            let splittable = bucket.low < bucket.high
                && (bucket.covers(&self.own_id) || bucket.depth() % SPLIT_DEPTH_MODULUS != 0);
            if !splittable {
                // The contact stays in the replacement cache that `Bucket::add` put it in.
                return Insert::BucketFull { least_recent: bucket.contacts[0] };
            }
            self.split(index);
            split = true;
        }
    }

    fn split(&mut self, index: usize) {
        let bucket = self.buckets.remove(index);
        let midpoint = bucket.low.midpoint(&bucket.high);
        let mut lower = Bucket::new(bucket.low, midpoint, bucket.last_touched);
        let mut upper = Bucket::new(midpoint.successor(), bucket.high, bucket.last_touched);
        for contact in bucket.contacts.into_iter().chain(bucket.replacements) {
            let half = if contact.id <= midpoint { &mut lower } else { &mut upper };
            half.add(contact, self.limits);
        }
        self.buckets.insert(index, upper);
        self.buckets.insert(index, lower);
    }

    /// Removes a contact that failed to answer; the bucket's newest replacement whose IP
    /// address has room takes its place.
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let index = self.bucket_index(id);
        let bucket = &mut self.buckets[index];
        bucket.replacements.retain(|contact| contact.id != *id);
        let Some(position) = bucket.contacts.iter().position(|contact| contact.id == *id) else {
            return false;
        };
        bucket.contacts.remove(position);
        bucket.promote_replacement(self.limits);
        true
    }

    /// Up to `count` contacts closest to `target`, closest first, without the contact whose id
    /// is `target` and without any at address `exclude` (Python's `find_neighbors`).
    pub fn closest(
        &self,
        target: &NodeId,
        count: usize,
        exclude: Option<PeerAddr>,
    ) -> Vec<Contact> {
        // Every bucket covers an aligned block of ids, and XOR with the target maps aligned
        // blocks to aligned blocks: all of one bucket's contacts are closer to the target than
        // all of another's. So buckets are visited closest block first, and the visit stops
        // once `count` contacts are in hand; of the last bucket only the nearest are selected.
        // Each bucket's share is sorted on its own, which sorts the whole.
        // Buckets are ordered by `DistanceKey`s (two integer compares), not 20-byte arrays.
        // Contacts are ranked by the first 8 bytes of their distance, with the whole distance
        // only to break ties: the 16-byte pairs that are selected and sorted (a key and a
        // place) made that a third cheaper than sorting 48-byte ones. They are ranked in a
        // buffer of the thread's, kept between calls: one allocation less per answer.
        // The block holding the target is the nearest (distance zero) and needs no search:
        // with full buckets it alone often holds the `count` nearest.
        let mut holding_target = Some(self.bucket_index(target));
        let target = DistanceKey::of(&target.0);
        let distance = |contact: &Contact| target.xor(DistanceKey::of(&contact.id.0));
        let contact =
            |(bucket, slot): (u32, u32)| &self.buckets[bucket as usize].contacts[slot as usize];
        let rank = |a: &Ranked, b: &Ranked| {
            a.0.cmp(&b.0).then_with(|| distance(contact(a.1)).cmp(&distance(contact(b.1))))
        };
        RANKED_OF_THREAD.with_borrow_mut(|(found, scratch)| {
            found.clear();
            let mut visited = DistanceKey::ZERO;
            while found.len() < count {
                // The nearest block not visited yet. Blocks are disjoint, so their nearest
                // distances differ; two or three buckets usually hold the `count` nearest, so
                // ordering all of them would be wasted.
                let index = match holding_target.take() {
                    Some(index) => index,
                    None => {
                        let Some((nearest, index)) = self
                            .buckets
                            .iter()
                            .enumerate()
                            .filter(|(_, bucket)| !bucket.contacts.is_empty())
                            .map(|(index, bucket)| (bucket.nearest_distance(target), index))
                            .filter(|(distance, _)| *distance > visited)
                            .min_by_key(|(distance, _)| *distance)
                        else {
                            break;
                        };
                        visited = nearest;
                        index
                    }
                };
                let start = found.len();
                let bucket = index as u32;
                found.extend(self.buckets[index].contacts.iter().zip(0..).filter_map(
                    |(contact, slot)| {
                        let distance = distance(contact);
                        // A zero distance is the target itself.
                        (distance != DistanceKey::ZERO && Some(contact.addr) != exclude)
                            .then_some(((distance.0 >> 64) as u64, (bucket, slot)))
                    },
                ));
                let wanted = count - start;
                let share = &mut found[start..];
                if !order_by_prefix(share, wanted, scratch) {
                    if share.len() > wanted {
                        share.select_nth_unstable_by(wanted, rank);
                    }
                    let kept = wanted.min(share.len());
                    share[..kept].sort_unstable_by(rank);
                }
                found.truncate(count);
            }
            found.iter().map(|&(_, place)| *contact(place)).collect()
        })
    }

    /// Marks the bucket holding `target` as used now, as a lookup near it does in Python.
    pub fn touch(&mut self, target: &NodeId) {
        let index = self.bucket_index(target);
        self.buckets[index].last_touched = Instant::now();
    }

    /// Ranges `(low, high)` of the buckets that do not hold the own id: the ones a lookup of
    /// the own id does not fill, for the lookups that follow a join.
    pub fn far_buckets(&self) -> Vec<(NodeId, NodeId)> {
        self.buckets
            .iter()
            .filter(|bucket| !bucket.covers(&self.own_id))
            .map(|bucket| (bucket.low, bucket.high))
            .collect()
    }

    /// Ranges `(low, high)` of buckets not touched since `now - max_age`, for refresh lookups.
    pub fn stale_buckets(&self, now: Instant, max_age: Duration) -> Vec<(NodeId, NodeId)> {
        self.buckets
            .iter()
            .filter(|bucket| now.saturating_duration_since(bucket.last_touched) >= max_age)
            .map(|bucket| (bucket.low, bucket.high))
            .collect()
    }

    /// Every contact in buckets proper.
    pub fn contacts(&self) -> Vec<Contact> {
        self.buckets.iter().flat_map(|bucket| bucket.contacts.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn contact(id: NodeId, port: u16) -> Contact {
        Contact { id, addr: PeerAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port) }
    }

    fn id_with_first_byte(first: u8, last: u8) -> NodeId {
        let mut bytes = [0u8; ID_LEN];
        bytes[0] = first;
        bytes[ID_LEN - 1] = last;
        NodeId(bytes)
    }

    #[test]
    fn fills_one_bucket_then_splits_around_the_own_id() {
        let mut table = RoutingTable::new(NodeId::ZERO, 4);
        for i in 0..4u8 {
            assert_eq!(
                table.add(contact(id_with_first_byte(0x80 + i, 0), 1000 + u16::from(i))),
                Insert::Added
            );
        }
        assert_eq!(table.bucket_count(), 1);
        // A fifth contact near the own id: the bucket holds the own id, so it splits.
        assert_eq!(table.add(contact(id_with_first_byte(0x01, 0), 2000)), Insert::Added);
        assert_eq!(table.bucket_count(), 2);
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn far_full_bucket_keeps_replacements_and_promotes_them_on_removal() {
        let mut table = RoutingTable::new(NodeId::ZERO, 2);
        let a = id_with_first_byte(0b1000_0000, 0);
        let b = id_with_first_byte(0b1000_0100, 0);
        let c = id_with_first_byte(0b1000_0110, 0);
        table.add(contact(NodeId::ZERO.successor(), 9));
        table.add(contact(a, 10));
        // Full, but the only bucket holds the own id: it splits and b fits in the upper half.
        assert_eq!(table.add(contact(b, 11)), Insert::Added);
        assert_eq!(table.bucket_count(), 2);
        // The upper half lacks the own id and a, b share 5 bits (a multiple of 5): no split.
        assert_eq!(table.add(contact(c, 12)), Insert::BucketFull { least_recent: contact(a, 10) });
        assert_eq!(table.bucket_count(), 2);
        assert!(table.is_new(&c));
        assert!(table.remove(&a));
        assert!(!table.is_new(&c), "the replacement was promoted");
        assert_eq!(table.get(&c).map(|found| found.addr.port()), Some(12));
        assert!(!table.remove(&a), "already gone");
    }

    #[test]
    fn replacement_cache_is_bounded() {
        let k = 1;
        let mut table = RoutingTable::new(NodeId::ZERO, k);
        table.add(contact(id_with_first_byte(0x00, 1), 1));
        // All in the far half and sharing 5 leading bits with each other: cannot split.
        for i in 0..50u8 {
            table.add(contact(id_with_first_byte(0b1000_0000, i), 100 + u16::from(i)));
        }
        let bucket_holding_far = table.bucket_index(&id_with_first_byte(0x80, 0));
        assert_eq!(table.buckets[bucket_holding_far].replacements.len(), k * REPLACEMENT_FACTOR);
    }

    #[test]
    fn own_id_is_never_stored() {
        let own = NodeId::random();
        let mut table = RoutingTable::new(own, 20);
        assert_eq!(table.add(contact(own, 1)), Insert::OwnId);
        assert!(table.is_empty());
    }

    #[test]
    fn re_adding_refreshes_but_keeps_the_known_address() {
        let mut table = RoutingTable::new(NodeId::ZERO, 20);
        let id = NodeId::random();
        let other = NodeId::random();
        assert_eq!(table.add(contact(id, 1)), Insert::Added);
        assert_eq!(table.add(contact(other, 3)), Insert::Added);
        assert_eq!(table.add(contact(id, 2)), Insert::Refreshed);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(&id).unwrap().addr.port(), 1);
        assert_eq!(table.contacts().last().unwrap().id, id, "most recently seen last");
    }

    #[test]
    fn far_buckets_are_every_bucket_but_the_one_holding_the_own_id() {
        let mut table = RoutingTable::new(NodeId::ZERO, 2);
        assert!(table.far_buckets().is_empty(), "one bucket, holding the own id");
        for (i, first) in [0x80, 0x90, 0x01, 0x02, 0x03].into_iter().enumerate() {
            table.add(contact(id_with_first_byte(first, 0), 1000 + i as u16));
        }
        let far = table.far_buckets();
        assert_eq!(far.len(), table.bucket_count() - 1);
        assert!(far.iter().all(|(low, _)| *low != NodeId::ZERO), "{far:?}");
        assert!(far.contains(&(id_with_first_byte(0x80, 0), NodeId::MAX)), "{far:?}");
    }

    #[test]
    fn contacts_alike_in_their_first_bytes_are_ranked_by_the_rest() {
        // Ids equal but for one byte: in the last byte the 8-byte rank ties; in the eighth,
        // the ranks differ only in the bits that sorting them as integers gives to the place.
        // Either way the whole distance decides.
        for byte in [19, 7] {
            let own = NodeId([0xff; 20]);
            let mut table = RoutingTable::new(own, 20);
            let ids: Vec<NodeId> = [9u8, 3, 7, 1, 5]
                .into_iter()
                .map(|value| {
                    let mut id = [0u8; 20];
                    id[byte] = value;
                    NodeId(id)
                })
                .collect();
            for (port, id) in ids.iter().enumerate() {
                table.add(contact(*id, port as u16 + 1));
            }
            let target = NodeId([0; 20]);
            let found: Vec<u8> =
                table.closest(&target, 3, None).iter().map(|c| c.id.0[byte]).collect();
            assert_eq!(found, [1, 3, 5], "ids differing in byte {byte}");
        }
    }

    #[test]
    fn closest_returns_k_nearest_sorted_without_target_and_excluded() {
        let own = NodeId::random();
        let mut table = RoutingTable::new(own, 20);
        let contacts: Vec<Contact> =
            (0..2000u16).map(|port| contact(NodeId::random(), port + 1)).collect();
        for c in &contacts {
            table.add(*c);
        }
        let stored = table.contacts();
        assert!(stored.len() > 20 && stored.len() < 2000);
        let target = stored[5].id;
        let excluded = stored[7].addr;
        let found = table.closest(&target, 20, Some(excluded));
        assert_eq!(found.len(), 20);
        let mut expected: Vec<Contact> =
            stored.iter().filter(|c| c.id != target && c.addr != excluded).copied().collect();
        expected.sort_by_key(|c| c.id.distance(&target));
        expected.truncate(20);
        assert_eq!(found, expected);
        assert!(table.closest(&target, 0, None).is_empty());
        for count in [1, 20, 50, stored.len() + 5] {
            let target = NodeId::random();
            let mut expected = stored.clone();
            expected.sort_by_key(|c| c.id.distance(&target));
            expected.truncate(count);
            assert_eq!(table.closest(&target, count, None), expected);
        }
    }

    /// Brute force: every stored contact but the target's and the excluded, fully sorted.
    fn closest_by_full_sort(
        table: &RoutingTable,
        target: &NodeId,
        count: usize,
        exclude: Option<PeerAddr>,
    ) -> Vec<Contact> {
        let mut expected: Vec<Contact> = table
            .contacts()
            .into_iter()
            .filter(|c| c.id != *target && Some(c.addr) != exclude)
            .collect();
        expected.sort_by_key(|c| c.id.distance(target));
        expected.truncate(count);
        expected
    }

    #[test]
    fn closest_matches_a_full_sort_over_random_tables() {
        for (k, size) in [(1, 50), (3, 300), (8, 1000), (20, 3000)] {
            let mut table = RoutingTable::new(NodeId::random(), k);
            // Half random ids, half sharing their first 16 bytes with the own id, so that
            // distances tie on the high 128 bits and the low 32 decide.
            for port in 0..size {
                let mut id = NodeId::random();
                if port % 2 == 0 {
                    id.0[..16].copy_from_slice(&table.own_id.0[..16]);
                }
                table.add(contact(id, port + 1));
            }
            let stored = table.contacts();
            for round in 0..50 {
                let target =
                    if round % 3 == 0 { stored[round % stored.len()].id } else { NodeId::random() };
                let exclude = (round % 2 == 0).then(|| stored[(round * 7) % stored.len()].addr);
                for count in [1, k, 20, stored.len() + 1] {
                    assert_eq!(
                        table.closest(&target, count, exclude),
                        closest_by_full_sort(&table, &target, count, exclude),
                        "k {k}, {} stored, count {count}, round {round}",
                        stored.len()
                    );
                }
            }
        }
    }

    #[test]
    fn buckets_tile_the_id_space() {
        let mut table = RoutingTable::new(NodeId::random(), 3);
        for port in 0..500 {
            table.add(contact(NodeId::random(), port));
        }
        assert!(table.bucket_count() > 3);
        assert_eq!(table.buckets[0].low, NodeId::ZERO);
        assert_eq!(table.buckets.last().unwrap().high, NodeId::MAX);
        for pair in table.buckets.windows(2) {
            assert_eq!(pair[0].high.successor(), pair[1].low);
        }
        for bucket in &table.buckets {
            assert!(bucket.contacts.iter().all(|c| bucket.covers(&c.id)));
            assert!(bucket.contacts.len() <= 3);
        }
    }

    /// A contact at `ip` (a documentation address unless loopback), port `port`.
    fn contact_at(id: NodeId, ip: [u8; 4], port: u16) -> Contact {
        Contact { id, addr: PeerAddr::new(IpAddr::from(ip), port) }
    }

    fn held_from(table: &RoutingTable, ip: [u8; 4]) -> Vec<Contact> {
        let ip = IpAddr::from(ip);
        table.contacts().into_iter().filter(|c| c.addr.ip() == ip).collect()
    }

    #[test]
    fn one_ip_holds_its_share_of_a_bucket_and_its_oldest_contact_is_to_be_pinged() {
        let mut table = RoutingTable::new(NodeId::ZERO, 20);
        let host = [192, 0, 2, 1];
        let ids: Vec<NodeId> = (0..6).map(|i| id_with_first_byte(0x80, i)).collect();
        for (port, id) in (1000..).zip(&ids[..DEFAULT_MAX_CONTACTS_PER_IP]) {
            assert_eq!(table.add(contact_at(*id, host, port)), Insert::Added);
        }
        let oldest = contact_at(ids[0], host, 1000);
        for (port, id) in (2000..).zip(&ids[DEFAULT_MAX_CONTACTS_PER_IP..]) {
            assert_eq!(
                table.add(contact_at(*id, host, port)),
                Insert::BucketFull { least_recent: oldest },
                "a bucket with room still refuses a fourth contact of one IP"
            );
        }
        assert_eq!(held_from(&table, host).len(), DEFAULT_MAX_CONTACTS_PER_IP);
        assert_eq!(table.bucket_count(), 1, "refused contacts split nothing");
        // Other addresses still get in.
        // Another address gets in, even with an id that waits as the capped IP's replacement:
        // it leaves the replacement cache (no id is held twice).
        assert_eq!(table.add(contact_at(ids[5], [192, 0, 2, 2], 1000)), Insert::Added);
        // The oldest of the IP fails its ping: its newest waiting contact takes its place.
        assert!(table.remove(&oldest.id));
        let held: Vec<NodeId> = held_from(&table, host).iter().map(|c| c.id).collect();
        assert_eq!(held, vec![ids[1], ids[2], ids[4]]);
    }

    #[test]
    fn on_loopback_the_share_is_counted_per_port() {
        let mut table = RoutingTable::new(NodeId::ZERO, 20).with_max_contacts_per_ip(2);
        for port in 1..=20 {
            assert_eq!(
                table.add(contact_at(NodeId::random(), [127, 0, 0, 1], port)),
                Insert::Added
            );
        }
        assert_eq!(table.len(), 20, "one machine's nodes differ by port");
        let mut crowded = RoutingTable::new(NodeId::ZERO, 20).with_max_contacts_per_ip(2);
        let first = contact_at(id_with_first_byte(0x80, 1), [127, 0, 0, 1], 4000);
        crowded.add(first);
        crowded.add(contact_at(id_with_first_byte(0x80, 2), [127, 0, 0, 1], 4000));
        assert_eq!(
            crowded.add(contact_at(id_with_first_byte(0x80, 3), [127, 0, 0, 1], 4000)),
            Insert::BucketFull { least_recent: first }
        );
    }

    #[test]
    fn the_share_is_configurable_and_at_least_one() {
        for (configured, held) in [(1, 1), (0, 1), (5, 5)] {
            let mut table =
                RoutingTable::new(NodeId::ZERO, 20).with_max_contacts_per_ip(configured);
            for port in 1..=10 {
                table.add(contact_at(NodeId::random(), [198, 51, 100, 9], port));
            }
            assert_eq!(table.len(), held, "configured {configured}");
        }
    }

    #[test]
    fn a_flood_of_made_up_ids_from_one_ip_neither_evicts_nor_splits() {
        let own = NodeId::random();
        let mut table = RoutingTable::new(own, 20);
        // Honest contacts all in the half of the id space away from the own id, so that the
        // buckets near it are empty: whatever splits there, the flood caused.
        for i in 0..500u16 {
            let [high, low] = i.to_be_bytes();
            let mut id = NodeId::random();
            id.0[0] = (id.0[0] & 0x7f) | (!own.0[0] & 0x80);
            table.add(contact_at(id, [10, 1, high, low], 5678));
        }
        let honest = table.contacts();
        let buckets = table.bucket_count();
        let flooder = [203, 0, 113, 7];
        // Made-up ids sharing the own id's first 15 bytes, where an eclipse aims: buckets there
        // would split again and again if one address could fill them.
        for port in 0..10_000u16 {
            let mut id = NodeId::random();
            id.0[..15].copy_from_slice(&own.0[..15]);
            table.add(contact_at(id, flooder, port));
        }
        assert_eq!(table.bucket_count(), buckets, "no bucket split for the flood");
        assert_eq!(held_from(&table, flooder).len(), DEFAULT_MAX_CONTACTS_PER_IP);
        // Then made-up ids anywhere: among the honest contacts too.
        for port in 10_000..30_000u16 {
            table.add(contact_at(NodeId::random(), flooder, port));
        }
        for contact in &honest {
            assert_eq!(table.get(&contact.id), Some(*contact), "an honest contact was evicted");
        }
        let flooded = IpAddr::from(flooder);
        for bucket in &table.buckets {
            let from_flooder =
                |list: &Vec<Contact>| list.iter().filter(|c| c.addr.ip() == flooded).count();
            assert!(from_flooder(&bucket.contacts) <= DEFAULT_MAX_CONTACTS_PER_IP);
            assert!(from_flooder(&bucket.replacements) <= DEFAULT_MAX_CONTACTS_PER_IP);
        }
    }

    #[test]
    fn a_removed_contact_is_replaced_by_the_newest_replacement_whose_ip_has_room() {
        let limits = Limits { k: 4, max_replacements: 20, max_per_ip: 2 };
        let mut bucket = Bucket::new(NodeId::ZERO, NodeId::MAX, Instant::now());
        let [a1, a2, a3, b1, c1, d1] = [
            ([192, 0, 2, 1], 1),
            ([192, 0, 2, 1], 2),
            ([192, 0, 2, 1], 3),
            ([192, 0, 2, 2], 1),
            ([192, 0, 2, 3], 1),
            ([192, 0, 2, 4], 1),
        ]
        .map(|(ip, port)| contact_at(NodeId::random(), ip, port));
        for placed in [a1, a2, b1, c1] {
            assert_eq!(bucket.add(placed, limits), BucketAdd::Added);
        }
        assert_eq!(bucket.add(d1, limits), BucketAdd::Full);
        assert_eq!(bucket.add(a3, limits), BucketAdd::SourceFull { least_recent: a1 });
        assert_eq!(bucket.replacements, vec![d1, a3]);
        bucket.contacts.retain(|c| c.id != c1.id);
        bucket.promote_replacement(limits);
        assert_eq!(bucket.contacts, vec![a1, a2, b1, d1], "a3 would be a third of its IP");
        assert_eq!(bucket.replacements, vec![a3]);
    }

    #[test]
    fn one_ip_keeps_at_most_its_share_of_the_replacement_cache() {
        let limits = Limits { k: 1, max_replacements: 20, max_per_ip: 2 };
        let mut bucket = Bucket::new(NodeId::ZERO, NodeId::MAX, Instant::now());
        bucket.add(contact_at(NodeId::random(), [192, 0, 2, 9], 1), limits);
        let waiting: Vec<Contact> =
            (1..=5).map(|port| contact_at(NodeId::random(), [192, 0, 2, 1], port)).collect();
        for contact in &waiting {
            assert_eq!(bucket.add(*contact, limits), BucketAdd::Full);
        }
        assert_eq!(bucket.replacements, waiting[3..].to_vec(), "the newest two of the IP");
    }

    #[test]
    fn stale_buckets_are_reported_after_max_age() {
        let mut table = RoutingTable::new(NodeId::random(), 20);
        table.add(contact(NodeId::random(), 1));
        assert!(table.stale_buckets(Instant::now(), Duration::from_secs(3600)).is_empty());
        let later = Instant::now() + Duration::from_secs(3601);
        assert_eq!(
            table.stale_buckets(later, Duration::from_secs(3600)),
            vec![(NodeId::ZERO, NodeId::MAX)]
        );
    }
}
