"""The vocabulary of the world: attribute values, the words captions use for them, caption
templates, spam, noise types and task names.

Every other module of the world draws from these tables, and tests parse captions with them.
"""

ON_TASK_SHAPES = ('circle', 'square', 'triangle', 'star', 'cross', 'heart', 'diamond', 'ring')
OFF_TASK_SHAPES = ('hexagon', 'crescent', 'arrow', 'pentagon')  # no task asks for these
SHAPES = ON_TASK_SHAPES + OFF_TASK_SHAPES
COLORS = {  # saturated or extreme, so none equals a (grey or muted) background
    'red': (220, 30, 30), 'green': (30, 170, 50), 'blue': (30, 70, 230),
    'yellow': (250, 220, 30), 'purple': (140, 50, 190), 'orange': (250, 140, 20),
    'white': (250, 250, 250), 'black': (15, 15, 15), 'cyan': (30, 220, 230),
    'pink': (250, 130, 190),
    # No task asks for these (WorldConfig.offtask_attributes): dark or muddy, each at least
    # ~90 levels from every task colour on some channel.
    'brown': (140, 80, 30), 'olive': (120, 125, 10), 'navy': (15, 20, 120),
    'maroon': (125, 10, 50),
}
COLOR_NAMES = tuple(COLORS)
ON_TASK_COLORS = COLOR_NAMES[:10]
OFF_TASK_COLORS = COLOR_NAMES[10:]
ON_TASK_TEXTURES = ('solid', 'striped', 'dotted', 'checkered')
OFF_TASK_TEXTURES = ('wavy', 'concentric')  # no task asks for these
TEXTURES = ON_TASK_TEXTURES + OFF_TASK_TEXTURES
# Attribute -> (values some task asks for, values none does), for the attributes an
# off-task sample can differ in (WorldConfig.offtask_attributes). Each attribute's full
# value list is the first tuple then the second, so a value index means the same in both.
TASK_VALUE_GROUPS = {'shape': (ON_TASK_SHAPES, OFF_TASK_SHAPES),
                     'color': (ON_TASK_COLORS, OFF_TASK_COLORS),
                     'texture': (ON_TASK_TEXTURES, OFF_TASK_TEXTURES)}
SIZES = ('small', 'large')
ATTRIBUTES = ('shape', 'color', 'texture', 'size')

# Words a caption may use for each attribute value. No word is shared between values or
# attributes, and no template, filler or spam word is one of them, so a caption names its
# attributes unambiguously (tests parse captions with these tables).
SHAPE_WORDS = {
    'circle': ('circle', 'disc', 'disk'), 'square': ('square', 'box'),
    'triangle': ('triangle',), 'star': ('star', 'five-pointed star'),
    'cross': ('cross', 'plus sign'), 'heart': ('heart', 'love heart'),
    'diamond': ('diamond', 'rhombus'), 'ring': ('ring', 'donut', 'hoop'),
    'hexagon': ('hexagon',), 'crescent': ('crescent', 'crescent moon'),
    'arrow': ('arrow',), 'pentagon': ('pentagon',),
}
COLOR_WORDS = {
    'red': ('red', 'crimson', 'scarlet'), 'green': ('green', 'emerald'),
    'blue': ('blue', 'azure', 'cobalt'), 'yellow': ('yellow', 'golden', 'lemon'),
    'purple': ('purple', 'violet'), 'orange': ('orange', 'tangerine'),
    'white': ('white', 'snow-white'), 'black': ('black', 'jet-black', 'ebony'),
    'cyan': ('cyan', 'aqua', 'turquoise'), 'pink': ('pink', 'hot pink'),
    'brown': ('brown', 'chocolate'), 'olive': ('olive', 'khaki'),
    'navy': ('navy', 'midnight'), 'maroon': ('maroon', 'burgundy'),
}
TEXTURE_ADJ = {
    'solid': ('solid', 'solid-colored'), 'striped': ('striped', 'stripy'),
    'dotted': ('dotted', 'polka-dot', 'spotted'),
    'checkered': ('checkered', 'checked', 'checkerboard'),
    'wavy': ('wavy', 'rippled'), 'concentric': ('concentric', 'bullseye'),
}
TEXTURE_WITH = {
    'solid': ('in a solid color', 'with a solid fill'), 'striped': ('with stripes',),
    'dotted': ('with dots', 'with polka dots'),
    'checkered': ('with a checkerboard pattern', 'with checks'),
    'wavy': ('with waves', 'with wavy lines'),
    'concentric': ('with concentric bands', 'with a target pattern'),
}
SIZE_WORDS = {'small': ('small', 'little', 'tiny'), 'large': ('large', 'big', 'huge')}
BACKGROUND_WORDS = {'grey': ('grey', 'gray', 'neutral grey'),
                    'gradient': ('gradient', 'soft gradient', 'smooth gradient')}

TEMPLATES = (
    'a {size} {color} {tex} {shape} on a {bg} background',
    'photo of a {size} {color} {shape} {tex_with}',
    'stock image: {color} {shape}, HD wallpaper',
    '{color} {shape} icon, {tex}',
    'close-up of a {tex} {color} {shape}',
    '{size} {shape} in {color} {tex_with}, {bg} background',
    'illustration of a {color} {shape} {tex_with} on a {bg} backdrop',
    'clipart: {size} {tex} {color} {shape}',
    'this is a {color} {shape}. it is {size} and {tex}',
    '{color} {tex} {shape} vector art, minimalist design',
    'a picture showing one {size} {color} {shape} {tex_with}',
    '{shape}, {color}, {size}, {tex} pattern, high resolution',
)
FILLERS = ('', '', '', ', high quality', ' - 4k', ', digital art', ' (2019)', ', trending now')
SPAM_PHRASES = ('buy now', 'best price', 'free shipping', 'click here', 'limited offer',
                'discount', 'sale', 'order today', 'cheap deals', 'winner', '100% off',
                'act fast', 'subscribe')
SPAM_WORDS = ('deal', 'sale', 'cheap', 'bargain', 'wow', 'promo')

NOISE_TYPES = ('clean', 'misaligned', 'partial', 'corrupt_noise', 'corrupt_blur', 'blank',
               'extreme_aspect', 'exact_dup', 'near_dup', 'text_in_image', 'spam')
DEFAULT_NOISE = (('misaligned', 0.15), ('partial', 0.08), ('corrupt_noise', 0.03),
                 ('corrupt_blur', 0.03), ('blank', 0.02), ('extreme_aspect', 0.02),
                 ('exact_dup', 0.05), ('near_dup', 0.05), ('text_in_image', 0.04),
                 ('spam', 0.04))
_NOISE_CODE = {name: i for i, name in enumerate(NOISE_TYPES)}
TASK_NAMES = ('shapes', 'colors', 'textures', 'captions')
# A dup or misaligned sample looks for an eligible earlier sample this many times.
_CANDIDATES = 8
