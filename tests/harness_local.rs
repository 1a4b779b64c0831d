//! End to end, local backend: `swegym dataset validate` on the real marshmallow instances, and
//! `swegym evaluate` grading six patches (gold, wrong, not applying, hanging, printing fake
//! PASSED lines, empty) into the right six verdicts.

mod common;

#[test]
fn validate_and_grade_marshmallow_local() {
    if !common::slow("validate_and_grade_marshmallow_local")  {
        return;
    }
    common::validate_marshmallow("local");
    common::grading_scenario("local");
}
