//! A sample holder for demos and tests. Fictional: the resident number is
//! structurally valid but belongs to nobody we know of.

use dojang_policies::resident_number::ResidentNumber;

use super::claims::HolderData;

/// 홍길동, born 15 May 2000 in Seoul.
pub fn holder() -> HolderData {
    HolderData {
        family_name: "홍".into(),
        given_name: "길동".into(),
        resident_number: ResidentNumber::parse("000515-3012345")
            .unwrap_or_else(|_| unreachable!("a valid sample number")),
        address: "서울특별시 종로구 세종대로 209".into(),
        portrait: None,
    }
}
