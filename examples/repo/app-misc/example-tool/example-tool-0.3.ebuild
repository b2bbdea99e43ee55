# Copyright 2024 swarmtools authors
# Distributed under the terms of the MIT License

EAPI=8

DESCRIPTION="Tool needing libfoo and the old language slot"
HOMEPAGE="https://example.invalid/swarmtools"
S="${WORKDIR}"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RDEPEND="
	dev-lang/example-lang:1
	dev-libs/libfoo
"
DEPEND="dev-libs/libfoo"

src_compile() {
	echo "${CATEGORY}/${PF}" > "${PN}.txt" || die
}

src_install() {
	# ${P} keeps the two example-lang slots from colliding.
	insinto "/usr/share/${P}"
	doins "${PN}.txt"
}
