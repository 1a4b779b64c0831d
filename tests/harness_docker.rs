//! End to end, docker backend: `swegym dataset validate` on the real marshmallow instances, and
//! `swegym evaluate` grading six patches (gold, wrong, not applying, hanging, printing fake
//! PASSED lines, empty) into the right six verdicts.

mod common;

#[test]
fn validate_and_grade_marshmallow_docker() {
    if !common::slow("validate_and_grade_marshmallow_docker") || !common::docker("validate_and_grade_marshmallow_docker") {
        return;
    }
    common::validate_marshmallow("docker");
    common::grading_scenario("docker");
}
