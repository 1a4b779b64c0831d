//! Model patches as text: re-exported from [`swegym_schema::patch`], where the helpers live
//! so that the sampling stage (patch extraction) shares them without depending on this stage.

pub use swegym_schema::patch::*;
